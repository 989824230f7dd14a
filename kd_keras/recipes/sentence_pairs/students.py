"""Students of the sentence-pair recipe: the built-ins and your own.

`build_student(c, teacher, preprocessor, ...)` gives the sentence encoder
that `run` trains, from token inputs to a unit-length embedding of the
teacher's width:

- `"bilstm"`, `"static"`, `"tiny_bert"`: `kd_keras.models`' builders;
- your own, `--student MODULE:FUNCTION` or `DistillConfig(student=fn)`: the
  function is called with `vocabulary_size` and `output_dim` and those of
  `STUDENT_ARGUMENTS` its signature accepts (`offered_arguments`); what it
  returns is checked (`own_student`: a `keras.Model` from int32 token ids
  `[batch, length]` to `[batch, output_dim]`) and a `UnitNormalization`
  layer appended. Everything else (bucketing, streaming, checkpoints,
  export, the report) treats it as any student.

Example (a module `my_students.py` in the current directory, then
`kd-keras distill --student my_students:mlp`):

```python
import keras

def mlp(vocabulary_size, output_dim, embedding_dim):
    ids = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(vocabulary_size, embedding_dim, mask_zero=True)(ids)
    x = keras.layers.Dense(512, activation="gelu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)  # over the real tokens only
    return keras.Model(ids, keras.layers.Dense(output_dim)(x), name="mlp_student")
```

Each batch is padded (id 0) to its longest sentence, so padding must not
change an embedding: `mask_zero=True` and mask-aware layers, as here (a
`Conv1D` or `GlobalMaxPooling1D` drops the mask). The recipe warns when it
does (`padding_effect`).
"""

import importlib
import inspect
import time

import keras
import numpy as np

from kd_keras import distribute, teacher_pass
from kd_keras.models.bilstm import build_bilstm_encoder
from kd_keras.models.static import build_static_encoder, sif_weights, token_counts
from kd_keras.models.student_init import student_embeddings
from kd_keras.models.tiny_bert import build_tiny_bert_student
from kd_keras.progress import log
from kd_keras.recipes.config import ConfigError
from kd_keras.recipes.sentence_pairs.config import (
    BUILTIN_STUDENTS,
    STUDENT_ARGUMENTS,
    cwd_on_sys_path,
    student_spec,
)
from kd_keras.storage import digest

__all__ = [
    "build_student",
    "offered_arguments",
    "own_student",
    "padding_effect",
    "student_function",
    "student_module",
    "student_name",
]

_REQUIRED = STUDENT_ARGUMENTS[:2]  # vocabulary_size, output_dim
_OFFERED = frozenset(STUDENT_ARGUMENTS)


def student_module(student):
    """The module of a `MODULE:FUNCTION` student (to import before loading it), else `None`."""
    if isinstance(student, str) and student not in BUILTIN_STUDENTS:
        return student.partition(":")[0]
    return None


def student_function(student):
    """The function of your own student (`None` for a built-in), imported and checked.

    Args:
        student: the `student` setting: a built-in name, `"MODULE:FUNCTION"`
            (the module found from the current directory or `PYTHONPATH`;
            `FUNCTION` may be dotted, e.g. `Class.method`) or a function.

    Raises:
        ConfigError: one line: the module fails to import, has no such
            function, it is not callable, or its signature does not fit
            (`offered_arguments`).
    """
    if isinstance(student, keras.layers.Layer):
        raise ConfigError(
            f"--student: got a {type(student).__name__} object; pass the function that builds "
            "it (called with vocabulary_size and output_dim)"
        )
    if callable(student):
        offered_arguments(student)  # its signature, checked now
        return student
    if student in BUILTIN_STUDENTS:
        return None
    module_name, _, name = student.partition(":")
    with cwd_on_sys_path():
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # the user's module, whatever it raises
            first = (str(e).splitlines() or [""])[0]
            raise ConfigError(
                f"--student {student}: importing {module_name} failed: {type(e).__name__}: {first}"
            ) from None
    found = module
    for part in name.split("."):
        if not hasattr(found, part):
            where = getattr(module, "__file__", None) or module_name
            raise ConfigError(f"--student {student}: {where} has no {name!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(
            f"--student {student}: {name} in {module_name} is not callable ({type(found).__name__})"
        )
    offered_arguments(found)  # its signature, checked now
    return found


def offered_arguments(function):
    """The names of `STUDENT_ARGUMENTS` that `function` takes as keywords, in that order.

    Raises:
        ConfigError: it does not take `vocabulary_size` and `output_dim`, or
            requires an argument the recipe does not offer.
    """
    spec = student_spec(function)
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the two it must take
        return _REQUIRED
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name for p in parameters if p.kind in keywords}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    missing = [n for n in _REQUIRED if n not in named and not takes_all]
    if missing:
        raise ConfigError(
            f"--student {spec} must take the keyword arguments vocabulary_size and output_dim "
            f"(missing: {', '.join(missing)})"
        )
    unknown = [
        p.name
        for p in parameters
        if p.default is p.empty
        and (p.kind is p.POSITIONAL_ONLY or p.kind in keywords and p.name not in _OFFERED)
    ]
    if unknown:
        raise ConfigError(
            f"--student {spec} requires {', '.join(unknown)}, which the recipe does not offer "
            f"(it offers {', '.join(STUDENT_ARGUMENTS)}): give it a default"
        )
    return tuple(n for n in STUDENT_ARGUMENTS if takes_all or n in named)


def own_student(model, spec, output_dim):
    """Checks what your student function returned; appends a `UnitNormalization`.

    Args:
        model: the returned value.
        spec: str. The `--student` setting, for the messages.
        output_dim: int. The teacher's width.

    Returns:
        A functional `keras.Model` named like `model`: `int32 token_ids
        [batch, length] -> model -> UnitNormalization`, `[batch, output_dim]`.

    Raises:
        ConfigError: one line: not a `keras.Model`, another input than token
            ids `[batch, length]`, or another output than `[batch, output_dim]`.
    """
    if not isinstance(model, keras.Model):
        raise ConfigError(f"--student {spec} returned a {type(model).__name__}, not a keras.Model")
    expected = "int32 token ids [batch, length] (keras.Input(shape=(None,), dtype='int32'))"
    try:
        inputs = model.inputs  # a functional model's, or a Sequential's with an Input
    except AttributeError:
        inputs = None  # a subclassed model's come from the call below
    if inputs is not None:
        shapes = [tuple(t.shape) for t in inputs]
        dtypes = [str(t.dtype) for t in inputs]
        if len(inputs) != 1 or len(shapes[0]) != 2 or shapes[0][1] is not None:
            raise ConfigError(f"--student {spec}: the model takes {shapes}; expected {expected}")
        if "int" not in dtypes[0]:
            raise ConfigError(f"--student {spec}: the model takes {dtypes[0]}; expected {expected}")
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    try:
        outputs = model(token_ids)
    except Exception as e:  # the user's model, whatever it raises
        first = (str(e).splitlines() or [""])[0]
        raise ConfigError(
            f"--student {spec}: the model fails on {expected}: {type(e).__name__}: {first}"
        ) from None
    if keras.tree.is_nested(outputs) or tuple(outputs.shape) != (None, output_dim):
        got = keras.tree.map_structure(lambda t: list(t.shape), outputs)
        raise ConfigError(
            f"--student {spec}: the model returns {got}; expected [batch, {output_dim}] "
            "(output_dim, the teacher's width)"
        )
    normalized = keras.layers.UnitNormalization(name="normalize")(outputs)
    return keras.Model(token_ids, normalized, name=model.name)


def student_name(c, encoder):
    """How the log and the report name the student: a built-in's name, else the model's."""
    return c.student if c.student in BUILTIN_STUDENTS else encoder.name


def _token_embeddings(c, teacher, cache, progress):
    """`(initial token embeddings or None, seconds of the vocabulary pass)`.

    `embedding_init`: `"vocab"` runs every token of the vocabulary alone
    through the teacher (cached: one file per teacher serves every width).
    """
    token_outputs, seconds = None, 0.0
    if c.embedding_init == "vocab":
        vocabulary_size = len(teacher.preprocessor.vocabulary)
        path = cache / f"vocabulary-{digest(c.teacher, vocabulary_size)}.npz"
        t0 = time.perf_counter()
        token_outputs = teacher_pass.vocabulary_outputs(teacher, path, progress=progress)
        seconds = time.perf_counter() - t0
    return student_embeddings(c.embedding_init, teacher, c.embedding_dim, token_outputs), seconds


def _build_own(c, function, teacher, preprocessor, cache, progress, strategy):
    """Your student function called with what it accepts; `(encoder, vocabulary seconds)`."""
    names = offered_arguments(function)
    seconds = 0.0
    kwargs = {
        "vocabulary_size": len(teacher.preprocessor.vocabulary),
        "output_dim": int(teacher.output.shape[-1]),
        "embedding_dim": c.embedding_dim,
        "preprocessor": preprocessor,
        "sequence_length": c.sequence_length,
        "teacher": teacher,
    }
    if "token_embeddings" in names:  # computed only when asked for
        kwargs["token_embeddings"], seconds = _token_embeddings(c, teacher, cache, progress)
    spec = student_spec(c.student)
    with distribute.scope(strategy):
        model = function(**{n: kwargs[n] for n in names})
        encoder = own_student(model, spec, kwargs["output_dim"])
    change = padding_effect(encoder, kwargs["vocabulary_size"])
    if change > 1e-4:
        log(
            f"warning: padding changes {encoder.name}'s embeddings (by up to {change:.2g}); "
            "each batch is padded to its longest sentence with id 0: use mask_zero=True and "
            "mask-aware layers (RNNs, GlobalAveragePooling1D), or mask the padding yourself",
            prefix="kd-keras distill",
        )
    return encoder, seconds


def padding_effect(encoder, vocabulary_size, seed=0):
    """The largest change of a sentence's embedding when padding (id 0) is appended to it.

    Args:
        encoder: a model from int32 token ids `[batch, length]`.
        vocabulary_size: int. Ids are drawn from `[1, vocabulary_size)`.
        seed: int.

    Returns:
        float: `max |encoder(ids) - encoder(ids + 4 padding ids)|` on two random sentences.
    """
    ids = np.random.default_rng(seed).integers(1, vocabulary_size, size=(2, 5), dtype="int32")
    padded = np.pad(ids, ((0, 0), (0, 4)))
    short, long = (keras.ops.convert_to_numpy(encoder(x, training=False)) for x in (ids, padded))
    return float(np.abs(short - long).max())


def build_student(c, teacher, preprocessor, cache, progress, strategy, sentences=(), function=None):
    """The student's sentence encoder: token inputs to a unit-norm embedding.

    Its variables are made in `strategy`'s scope (the teacher runs outside
    it).

    Args:
        c: the `DistillConfig`.
        teacher: the `Teacher`.
        preprocessor: the student's `BertPreprocessor`.
        cache: `pathlib.Path` of the cache folder (vocabulary distillation).
        progress: bool. Report the vocabulary pass's progress.
        strategy: a `tf.distribute.Strategy`.
        sentences: the transfer set's sentences (the static student's SIF
            weights).
        function: your student function (`student_function(c.student)`);
            `None` for a built-in.

    Returns:
        `(encoder, seconds of the vocabulary pass)` (0 when cached or not run).
    """
    if function is not None:
        return _build_own(c, function, teacher, preprocessor, cache, progress, strategy)
    if c.student == "tiny_bert":
        with distribute.scope(strategy):
            return build_tiny_bert_student(
                teacher=teacher,
                num_layers=c.bert_layers,
                intermediate_dim=c.bert_intermediate_dim,
                normalize=True,
            ), 0.0
    width = int(teacher.output.shape[-1])
    vocabulary_size = len(teacher.preprocessor.vocabulary)
    init, seconds = _token_embeddings(c, teacher, cache, progress)
    if c.student == "static":
        weights = None
        if init is not None:
            weights = sif_weights(token_counts(teacher.preprocessor, sentences))
        with distribute.scope(strategy):
            return build_static_encoder(
                vocabulary_size,
                c.embedding_dim,
                width,
                "uniform" if init is None else init,
                token_weights=weights,
            ), seconds
    with distribute.scope(strategy):
        return build_bilstm_encoder(
            vocabulary_size,
            embedding_dim=c.embedding_dim,
            hidden_dim=c.hidden_dim,
            output_dim=width,
            embeddings_initializer="uniform" if init is None else init,
            normalize=True,
            embedding_skip=c.embedding_skip,
            dropout=c.dropout,
            num_layers=c.bilstm_layers,
            pooling=c.pooling,
        ), seconds
