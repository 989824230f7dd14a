"""Raw-text SavedModel export of a student (or a teacher) for serving.

`export_student(distiller_or_student, path)` writes a TensorFlow SavedModel
that holds the student's variables and its in-graph tokenizer (a
`BertPreprocessor`: `tf.strings` and `tensorflow_text` ops) and nothing else:
no teacher, no optimizer, no Keras objects. It takes raw `tf.string`
sentences and gives the numbers the student gives in Keras.

Signatures, by model kind, and the one `serving_default` rule: an export of
a sentence encoder, alone or inside a pair model, has the signatures `embed`
and `similarity`, and `serving_default` is `embed`; a classifier's only
signature, and so its `serving_default`, is `classify`. Every export path
follows it (`export_student`, `export_teacher`, `kd-keras export`, the
`kd-keras distill` run's own export).

- `"encoder"` (a sentence encoder: token ids -> `[batch, D]`):
  `embed` (the `serving_default`): `sentences` -> `embedding` float32
  `[None, D]`; `similarity`: `sentence_a`, `sentence_b` -> `score` float32
  `[None]`.
- `"pair"` (a siamese pair model): `embed` (its shared encoder tower; the
  `serving_default`) and `similarity` (the pair model's own score), as above.
- `"classifier"`: `classify` (the `serving_default`): `sentences` ->
  `probabilities` float32 `[None, C]` and `label` int64 `[None]`.

Every input is `tf.string [None]`.

- `score` is the cosine similarity. For a pair model it is the pair model's
  own output (the function it was trained with); for an encoder it is
  `<a / max(|a|, 1e-12), b / max(|b|, 1e-12)>`, so a zero vector scores 0,
  never NaN.
- Text is tokenized, truncated to the preprocessor's `sequence_length`
  tokens (special tokens included) and padded to the longest row of the
  batch, all inside the graph. An empty or whitespace-only string is the
  `[CLS] [SEP]` encoding; invalid UTF-8 bytes become `[UNK]`; an empty batch
  gives empty outputs.
- No device is pinned in the graph: the same export serves on CPU or GPU.
- `assets.extra/kd_keras_export.json` records the kind, signatures and
  tokenizer settings (TensorFlow itself ignores `assets.extra`), and
  `quantize`: `null` (float32) or `"int8"`, with `quantization` naming the
  int8 layers and those kept float32.
- `quantize="int8"` (`--quantize int8`) exports an int8 copy of the model
  (`kd_keras.quantize.quantize_copy`: Keras' `Model.quantize`, weights only;
  the model given is not changed): `Dense`, `EinsumDense` and embedding
  tables in int8, LSTM cells, layer norms and position embeddings in
  float32. Same signatures, inputs and output dtypes as float32.

Loading needs the `tensorflow_text` ops registered. `import tensorflow_text`
before `tf.saved_model.load` does it; where the `tensorflow_text` Python
package cannot be imported (it imports Keras), loading its op libraries is
enough:

```python
import glob, importlib.util, os
import tensorflow as tf

ops_dir = os.path.join(
    importlib.util.find_spec("tensorflow_text").submodule_search_locations[0], "python", "ops"
)
for library in sorted(glob.glob(os.path.join(ops_dir, "*.so"))):
    tf.load_op_library(library)
model = tf.saved_model.load("student_export")
model.signatures["embed"](sentences=tf.constant(["A sentence."]))["embedding"]
```

Writes are atomic: the export is written to a temporary folder next to the
target and renamed into place; replacing an existing export needs
`overwrite=True`, and a failed write leaves the old export as it was.

A student's tokenizer settings travel with a `.keras` file in a JSON
sidecar (`kd_keras.serving.student_files`).
"""

import dataclasses
import json
import os
import pathlib

import keras
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
from tensorflow.core.protobuf import saved_model_pb2

import kd_keras
from kd_keras.models.heads import cosine_similarity
from kd_keras.models.teachers import load_teacher
from kd_keras.quantize import check_quantize, quantize_copy
from kd_keras.serving.model_kinds import (
    DEFAULT_SIGNATURES,
    MODEL_KINDS,
    check_exportable,
    ends_with,
    feed,
    pair_tower,
    single_output,
)
from kd_keras.serving.student_files import check_preprocessor, unwrap_student
from kd_keras.storage import (
    CacheError,
    atomic_directory,
    directory_size,
    format_size,
    write_json_atomic,
)

__all__ = [
    "EXPORT_FORMAT",
    "METADATA_PATH",
    "MODEL_KINDS",
    "ExportResult",
    "export_student",
    "export_teacher",
    "export_text_model",
    "load_text_export",
    "verify_text_export",
]

EXPORT_FORMAT = "kd_keras.text_export.v1"
# Relative to the export folder. `assets.extra` is the SavedModel place for
# files that TensorFlow does not load (TF Serving reads warmup data there).
METADATA_PATH = "assets.extra/kd_keras_export.json"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_text_model` wrote.

    Attributes:
        path: `pathlib.Path` of the SavedModel folder.
        kind: `"encoder"`, `"pair"` or `"classifier"`.
        signatures: tuple of signature names, `serving_default` excluded.
        serving_default: the signature `serving_default` aliases.
        size_bytes: int. Total size of the files of the export.
        variables: tuple of the saved variables' names (student or teacher
            weights only; the tokenizer has no variables).
        quantize: `None` (float32) or `"int8"`.
        quantized_layers: tuple of the paths of the int8 layers (empty for
            float32).
    """

    path: pathlib.Path
    kind: str
    signatures: tuple
    serving_default: str
    size_bytes: int
    variables: tuple
    quantize: str = None
    quantized_layers: tuple = ()

    def summary(self):
        """One line describing the export, as `kd-keras export` prints it."""
        precision = ""
        if self.quantize:
            precision = f", {self.quantize}: {len(self.quantized_layers)} layers"
        return (
            f"Exported {self.kind} to {self.path} ({format_size(self.size_bytes)}, "
            f"{len(self.variables)} variables{precision}): signatures "
            f"{', '.join(self.signatures)} (serving_default = {self.serving_default})"
        )


# === Graph functions ===


def _sentences_spec(name):
    return tf.TensorSpec([None], tf.string, name=name)


def _build_functions(model, preprocessor, kind, from_logits):
    """The `tf.function`s of the export, by signature name (default first)."""

    def pack(sentences):
        packed = preprocessor.pack(preprocessor.tokenize(sentences))
        # An empty batch packs to `[0, 0]`; keep at least the 2 columns of
        # `[CLS] [SEP]` so that every model sees a valid (empty) batch.
        extra = tf.maximum(2 - tf.shape(packed["token_ids"])[1], 0)
        return {key: tf.pad(value, [[0, 0], [0, extra]]) for key, value in packed.items()}

    # One traced tokenizer shared by every signature: its WordPiece model
    # (a constant of about 1 MB for a 30k vocabulary) is stored once.
    pack = tf.function(pack, input_signature=[_sentences_spec("sentences")], autograph=False)

    def run(net, sentences):
        return net(feed(net.input, pack(sentences)), training=False)

    functions = {}
    if kind == "classifier":

        def classify(sentences):
            outputs = tf.cast(run(model, sentences), tf.float32)
            if outputs.shape[-1] == 1:
                positive = tf.sigmoid(outputs) if from_logits else outputs
                probabilities = tf.concat([1.0 - positive, positive], axis=-1)
            else:
                probabilities = tf.nn.softmax(outputs, axis=-1) if from_logits else outputs
            label = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {"probabilities": probabilities, "label": label}

        functions["classify"] = (classify, [_sentences_spec("sentences")])
        return functions

    tower = pair_tower(model) if kind == "pair" else model

    def embed(sentences):
        return {"embedding": tf.cast(run(tower, sentences), tf.float32)}

    def same_size(sentence_a, sentence_b):
        # Pairs are row by row: batches of different sizes are an error that
        # says so, never an opaque graph error or a silent broadcast (1 vs N).
        return tf.debugging.assert_equal(
            tf.shape(sentence_a)[0],
            tf.shape(sentence_b)[0],
            message="similarity: sentence_a and sentence_b must hold the same number of "
            "sentences (one pair per row)",
        )

    if kind == "pair":

        def similarity(sentence_a, sentence_b):
            with tf.control_dependencies([same_size(sentence_a, sentence_b)]):
                inputs = {
                    "sentence_a": feed(model.input["sentence_a"], pack(sentence_a)),
                    "sentence_b": feed(model.input["sentence_b"], pack(sentence_b)),
                }
            score = single_output(model(inputs, training=False), "The pair model")
            return {"score": tf.reshape(tf.cast(score, tf.float32), [-1])}

    else:

        def similarity(sentence_a, sentence_b):
            with tf.control_dependencies([same_size(sentence_a, sentence_b)]):
                a = embed(sentence_a)["embedding"]
                b = embed(sentence_b)["embedding"]
            return {"score": cosine_similarity(a, b)}

    embed_entry = (embed, [_sentences_spec("sentences")])
    similarity_entry = (similarity, [_sentences_spec("sentence_a"), _sentences_spec("sentence_b")])
    functions["embed"] = embed_entry
    functions["similarity"] = similarity_entry
    return functions


def _build_module(model, preprocessor, kind, from_logits):
    """A `tf.Module` holding the signatures and exactly the variables they use."""
    module = tf.Module(name="kd_keras_text_model")
    concrete = {}
    for name, (fn, signature) in _build_functions(model, preprocessor, kind, from_logits).items():
        # Signatures only: also attaching the `tf.function`s to the module
        # would make `tf.saved_model.save` trace and store them a second time.
        function = tf.function(fn, input_signature=signature, autograph=False)
        concrete[name] = function.get_concrete_function()
    variables, seen = [], set()
    for function in concrete.values():
        for variable in function.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    # The only trackable state of the export: the variables the signatures
    # read (no training-only state such as dropout seeds or optimizer slots).
    module.model_variables = variables
    signatures = dict(concrete)
    signatures["serving_default"] = concrete[DEFAULT_SIGNATURES[kind]]
    return module, signatures


# === Export ===


def _check_target(path, overwrite):
    """Raises unless `path` may be written (absent, or replaceable with `overwrite`)."""
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(
            f"Export target already exists: {path}. Pass overwrite=True (--overwrite) to "
            "replace it."
        )
    if path.is_symlink() or not path.is_dir():
        raise FileExistsError(
            f"Export target {path} exists and is not a folder; refusing to replace it."
        )
    if any(path.iterdir()) and not (path / "saved_model.pb").exists():
        raise FileExistsError(
            f"Export target {path} is a non-empty folder without saved_model.pb; refusing to "
            "replace something that is not a SavedModel."
        )


def _check_finite_weights(model):
    """Refuses to export a model with a NaN or infinite weight (a diverged training)."""
    for variable in model.weights:
        value = variable.numpy()
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(
                f"Model {model.name!r} has non-finite values in {variable.path}; refusing to "
                "export it (did training diverge?)."
            )


def _write_saved_model(module, signatures, directory):
    """`tf.saved_model.save` (a separate function so that tests can make it fail)."""
    # An export is never differentiated: the custom gradients of Keras' int8
    # layers would only add graph functions.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, str(directory), signatures=signatures, options=options)


def _with_sequence_length(preprocessor, sequence_length):
    if sequence_length is None or int(sequence_length) == preprocessor.sequence_length:
        return preprocessor
    config = preprocessor.get_config()
    config["sequence_length"] = int(sequence_length)
    return type(preprocessor).from_config(config)


def _metadata(model, preprocessor, kind, signatures, default, from_logits, quantized=None):
    config = preprocessor.get_config()
    tokenizer = {k: v for k, v in config.items() if k not in ("vocabulary", "name", "dtype")}
    tokenizer.pop("trainable", None)
    tokenizer["vocabulary_size"] = len(preprocessor.vocabulary)
    tokenizer["class_name"] = type(preprocessor).__name__
    outputs = {}
    for name, function in signatures.items():
        structured = function.structured_outputs
        outputs[name] = {
            # The specs are positional (`input_signature`): flatten args and kwargs.
            "inputs": [spec.name for spec in tf.nest.flatten(function.structured_input_signature)],
            "outputs": {
                key: {"dtype": value.dtype.name, "shape": value.shape.as_list()}
                for key, value in structured.items()
            },
        }
    return {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "model_name": model.name,
        "serving_default": default,
        "signatures": outputs,
        "from_logits": from_logits if kind == "classifier" else None,
        "quantize": None if quantized is None else quantized.mode,
        "quantization": None if quantized is None else quantized.metadata(),
        "padding": "dynamic (longest row of the batch, at least 2 tokens)",
        "empty_string": "encoded as [CLS] [SEP]",
        "tokenizer": tokenizer,
        "versions": {
            "kd_keras": kd_keras.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }


def export_text_model(
    model,
    preprocessor,
    path,
    kind="auto",
    sequence_length=None,
    from_logits=None,
    overwrite=False,
    quantize=None,
):
    """Writes `model` and its tokenizer as a raw-text SavedModel.

    Args:
        model: a built functional `keras.Model` taking the token ids of
            `preprocessor` (`token_ids` alone, `0` = padding, or a dict with
            `token_ids` / `segment_ids` / `padding_mask`), or a pair model
            taking `{"sentence_a": ..., "sentence_b": ...}` of those
            (`kd_keras.models.heads.build_pair_model`).
        preprocessor: the `BertPreprocessor` whose ids the model was trained
            on.
        path: the SavedModel folder to write.
        kind: `"auto"` (see `kd_keras.serving.model_kinds.infer_model_kind`),
            `"encoder"`, `"pair"` or `"classifier"`.
        sequence_length: int or `None`. Maximum tokens per sentence (special
            tokens included); defaults to the preprocessor's.
        from_logits: classifiers only: whether the model returns logits
            (`softmax` is applied in the export) or probabilities. `None`:
            probabilities when the output layer ends with a softmax (or a
            sigmoid for one output), else logits.
        overwrite: bool. Replace an existing export at `path`.
        quantize: `None` (float32) or `"int8"`: export an int8 copy of
            `model` (`kd_keras.quantize.quantize_copy`; `model` itself is not
            changed).

    Returns:
        An `ExportResult`.
    """
    path = pathlib.Path(path).absolute()
    quantize = check_quantize(quantize)
    _check_target(path, overwrite)
    check_preprocessor(preprocessor)
    preprocessor = _with_sequence_length(preprocessor, sequence_length)
    kind = check_exportable(model, kind)
    _check_finite_weights(model)
    if kind == "classifier" and from_logits is None:
        from_logits = not ends_with(model, ("softmax", "sigmoid"))
    quantized = None if quantize is None else quantize_copy(model, quantize)
    served = model if quantized is None else quantized.model

    module, signatures = _build_module(served, preprocessor, kind, from_logits)
    default = DEFAULT_SIGNATURES[kind]
    names = tuple(name for name in signatures if name != "serving_default")
    metadata = _metadata(model, preprocessor, kind, signatures, default, from_logits, quantized)

    def write(directory):
        _write_saved_model(module, signatures, directory)
        (directory / METADATA_PATH).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / METADATA_PATH, metadata)
        _check_target(path, overwrite)  # again, before the rename: it may have appeared since

    atomic_directory(path, write, replace=overwrite)
    return ExportResult(
        path=path,
        kind=kind,
        signatures=names,
        serving_default=default,
        size_bytes=directory_size(path),
        variables=tuple(v.name for v in module.model_variables),
        quantize=quantize,
        quantized_layers=() if quantized is None else quantized.layers,
    )


def export_student(
    distiller_or_student,
    path,
    preprocessor=None,
    kind="auto",
    sequence_length=None,
    from_logits=None,
    overwrite=False,
    quantize=None,
):
    """Exports the student alone, with its tokenizer, as a raw-text SavedModel.

    The teacher is never written, even when a `Distiller` is passed.

    Args:
        distiller_or_student: a `kd_keras.Distiller` (its `student` is
            exported) or the student `keras.Model` itself.
        path: the SavedModel folder to write.
        preprocessor: the `BertPreprocessor` whose token ids the student was
            trained on. Defaults to the model's own `preprocessor` attribute,
            else to the distiller's teacher's (students consume the ids of
            the teacher's preprocessor).
        kind: `"auto"`, `"encoder"`, `"pair"` or `"classifier"` (see
            `export_text_model`).
        sequence_length: int or `None`. Overrides the preprocessor's maximum
            length.
        from_logits: classifiers only; see `export_text_model`.
        overwrite: bool. Replace an existing export at `path`.
        quantize: `None` (float32) or `"int8"` (an int8 copy of the student;
            see `export_text_model`).

    Returns:
        An `ExportResult`.
    """
    quantize = check_quantize(quantize)
    student, teacher = unwrap_student(distiller_or_student)
    if preprocessor is None:
        preprocessor = getattr(student, "preprocessor", None)
    if preprocessor is None and teacher is not None:
        preprocessor = getattr(teacher, "preprocessor", None)
    if preprocessor is None:
        raise ValueError(
            f"No preprocessor for student {student.name!r}: pass `preprocessor=` (the "
            "BertPreprocessor whose token ids it was trained on), or a Distiller whose "
            "teacher has a `preprocessor`."
        )
    return export_text_model(
        student,
        preprocessor,
        path,
        kind=kind,
        sequence_length=sequence_length,
        from_logits=from_logits,
        overwrite=overwrite,
        quantize=quantize,
    )


def export_teacher(teacher, path, sequence_length=None, overwrite=False, quantize=None):
    """Exports a teacher encoder in the student's format (`embed`, `similarity`).

    So that teacher and student can be served and benchmarked the same way.

    Args:
        teacher: a `kd_keras.models.teachers.Teacher` (with a preprocessor), or
            a spec for `kd_keras.models.teachers.load_teacher`: `"default"` (the offline
            all-MiniLM-L6-v2) or a path.
        path: the SavedModel folder to write.
        sequence_length: int or `None`. Overrides the teacher's maximum
            length.
        overwrite: bool. Replace an existing export at `path`.
        quantize: `None` (float32) or `"int8"` (an int8 copy of the teacher;
            see `export_text_model`).

    Returns:
        An `ExportResult`.
    """
    path = pathlib.Path(path).absolute()
    quantize = check_quantize(quantize)
    _check_target(path, overwrite)
    if isinstance(teacher, (str, os.PathLike)):
        teacher = load_teacher(str(teacher), sequence_length=sequence_length)
    preprocessor = getattr(teacher, "preprocessor", None)
    if preprocessor is None:
        raise ValueError(
            f"Teacher {getattr(teacher, 'name', teacher)!r} has no preprocessor; export needs "
            "one to take raw text."
        )
    return export_text_model(
        teacher,
        preprocessor,
        path,
        kind="encoder",
        sequence_length=sequence_length,
        overwrite=overwrite,
        quantize=quantize,
    )


def load_text_export(path):
    """Loads a raw-text SavedModel (registering the `tensorflow_text` ops first)."""
    return tf.saved_model.load(str(path))


def verify_text_export(path):
    """Checks that an export folder is whole: its graph parses, every variable reads.

    Cheap beside a load (no graph is built), and enough to catch a folder
    that a killed copy or a full disk left truncated.

    Raises:
        kd_keras.storage.CacheError: naming the folder and what is damaged.
    """
    path = pathlib.Path(path)

    def damaged(what):
        return CacheError(f"Export {path} is damaged ({what}). Delete it to export again.")

    try:
        saved_model_pb2.SavedModel().ParseFromString((path / "saved_model.pb").read_bytes())
        json.loads((path / METADATA_PATH).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise damaged(f"{type(e).__name__}: {e}") from None
    except Exception as e:  # protobuf's DecodeError
        raise damaged(f"saved_model.pb: {type(e).__name__}") from None
    try:
        reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError) as e:  # IndexError: a short read
        raise damaged(f"variables: {type(e).__name__}: {e}") from None
