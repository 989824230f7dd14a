"""Raw-text SavedModel export of a student (or a teacher) for serving.

`export_student(distiller_or_student, path)` writes a TensorFlow SavedModel
that holds the student's variables and its in-graph tokenizer (a
`BertPreprocessor`: `tf.strings` and `tensorflow_text` ops) and nothing else:
no teacher, no optimizer, no Keras objects. It takes raw `tf.string`
sentences and gives the numbers the student gives in Keras.

Signatures, by model kind:

- `"encoder"` (a sentence encoder: token ids -> `[batch, D]`):
  `embed` (the `serving_default`): `sentences` -> `embedding` float32
  `[None, D]`; `similarity`: `sentence_a`, `sentence_b` -> `score` float32
  `[None]`.
- `"pair"` (a siamese pair model): `similarity` (the `serving_default`) and
  `embed` (its shared encoder tower), as above.
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
  tokenizer settings (TensorFlow itself ignores `assets.extra`).

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
sidecar (`save_student` / `load_student`), which `kd-keras export --student`
reads.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import uuid

import keras
import tensorflow as tf

__all__ = [
    "EXPORT_FORMAT",
    "METADATA_PATH",
    "MODEL_KINDS",
    "PREPROCESSOR_FORMAT",
    "ExportResult",
    "directory_size",
    "export_student",
    "export_teacher",
    "export_text_model",
    "format_size",
    "infer_model_kind",
    "load_preprocessor",
    "load_student",
    "preprocessor_sidecar_path",
    "save_preprocessor",
    "save_student",
    "write_text_atomic",
]

EXPORT_FORMAT = "kd_keras.text_export.v1"
PREPROCESSOR_FORMAT = "kd_keras.preprocessor.v1"
# Relative to the export folder. `assets.extra` is the SavedModel place for
# files that TensorFlow does not load (TF Serving reads warmup data there).
METADATA_PATH = "assets.extra/kd_keras_export.json"
MODEL_KINDS = ("encoder", "pair", "classifier")
DEFAULT_SIGNATURES = {"encoder": "embed", "pair": "similarity", "classifier": "classify"}

_BERT_KEYS = ("token_ids", "segment_ids", "padding_mask")
_PAIR_KEYS = (("sentence_a", "sentence_b"), ("first", "second"))
_SIDECAR_SUFFIX = ".preprocessor.json"
_EPSILON = 1e-12


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
    """

    path: pathlib.Path
    kind: str
    signatures: tuple
    serving_default: str
    size_bytes: int
    variables: tuple

    def summary(self):
        """One line describing the export, as `kd-keras export` prints it."""
        return (
            f"Exported {self.kind} to {self.path} ({format_size(self.size_bytes)}, "
            f"{len(self.variables)} variables): signatures {', '.join(self.signatures)} "
            f"(serving_default = {self.serving_default})"
        )


# === Sizes ===


def directory_size(path):
    """Total size in bytes of the files under `path` (or of the file `path`).

    Args:
        path: a folder or a file.

    Returns:
        int.
    """
    path = pathlib.Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += (pathlib.Path(root) / name).stat().st_size
    return total


def format_size(num_bytes):
    """`num_bytes` for humans, in binary units: `"12.3 MiB"`.

    Args:
        num_bytes: int.

    Returns:
        str.
    """
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# === Model kinds ===


def _is_functional(model):
    try:
        model.input  # noqa: B018
    except (AttributeError, ValueError):
        return False
    return True


def _pair_keys(model):
    """The two input keys of a pair model, or `None` for a one-sentence model."""
    structure = model.input
    if not isinstance(structure, dict) or len(structure) != 2:
        return None
    for keys in _PAIR_KEYS:
        if set(keys) == set(structure):
            return keys
    return None


def _output_layer(model):
    history = getattr(model.output, "_keras_history", None)
    return None if history is None else history[0]


def _ends_with(model, activation_names):
    """Whether the model's output layer applies one of `activation_names`."""
    layer = _output_layer(model)
    if layer is None:
        return False
    if isinstance(layer, keras.layers.Softmax):
        return "softmax" in activation_names
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    return name in activation_names


def infer_model_kind(model):
    """Guesses the export kind of a functional Keras model.

    - `"pair"`: the inputs are a dict with exactly the keys `sentence_a` and
      `sentence_b` (`models.layers.siamese`) or `first` and `second`
      (`models.heads.build_pair_similarity_model`);
    - `"classifier"`: the output layer ends with a softmax;
    - `"encoder"`: anything else. A classifier that returns logits looks
      like an encoder: pass `kind="classifier"` for it.

    Args:
        model: a functional `keras.Model`.

    Returns:
        One of `MODEL_KINDS`.
    """
    if not _is_functional(model):
        raise ValueError(
            f"Model {model.name!r} has no symbolic inputs (a subclassed model?); only "
            "functional models (and Sequential models built on an `Input`) can be exported."
        )
    if _pair_keys(model) is not None:
        return "pair"
    if _ends_with(model, ("softmax",)):
        return "classifier"
    return "encoder"


def _pair_tower(model):
    """The shared sentence encoder inside a pair model."""
    towers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and all(t is not layer for t in towers):
            towers.append(layer)
    if len(towers) != 1:
        raise ValueError(
            f"Pair model {model.name!r}: expected exactly one shared encoder tower (a "
            f"sub-`keras.Model` layer); found {len(towers)} ({[t.name for t in towers]})."
        )
    return towers[0]


def _check_sentence_inputs(structure, what):
    """Checks that an input structure is token ids or a dict of BERT inputs."""
    expected = f"token ids `[batch, length]` or a dict of BERT inputs {list(_BERT_KEYS)}"
    if isinstance(structure, dict):
        unknown = sorted(set(structure) - set(_BERT_KEYS))
        if unknown:
            raise ValueError(
                f"{what} takes inputs {sorted(structure)}; an exported model must take "
                f"{expected} (unknown: {unknown})."
            )
        return
    if isinstance(structure, (list, tuple)):
        if len(structure) != 1:
            raise ValueError(f"{what} takes {len(structure)} inputs; expected {expected}.")
        structure = structure[0]
    if len(structure.shape) != 2:
        raise ValueError(f"{what} takes an input of shape {structure.shape}; expected {expected}.")


def _feed(structure, packed):
    """The packed BERT inputs, shaped as a model's `input` structure."""
    if isinstance(structure, dict):
        return {key: tf.cast(packed[key], structure[key].dtype) for key in structure}
    if isinstance(structure, (list, tuple)):
        return [tf.cast(packed["token_ids"], structure[0].dtype)]
    return tf.cast(packed["token_ids"], structure.dtype)


def _single_output(outputs, what):
    if isinstance(outputs, dict):
        for key in ("score", "cosine"):
            if key in outputs:
                return outputs[key]
        raise ValueError(
            f"{what} returns a dict {sorted(outputs)}; expected a `score` or `cosine` entry."
        )
    if isinstance(outputs, (list, tuple)):
        raise ValueError(f"{what} returns {len(outputs)} outputs; expected one tensor.")
    return outputs


def _check_output_rank(model, kind):
    output = model.output
    if kind == "pair":
        output = _single_output(output, f"Pair model {model.name!r}")
        if not (len(output.shape) == 1 or (len(output.shape) == 2 and output.shape[-1] == 1)):
            raise ValueError(
                f"Pair model {model.name!r} outputs shape {output.shape}; expected the cosine "
                "score `[batch]` or `[batch, 1]` (export a pair model built with "
                "`output='cosine'`, or export its sentence encoder)."
            )
        return
    if isinstance(output, (dict, list, tuple)):
        raise ValueError(
            f"Model {model.name!r} has several outputs; an {kind} must return one tensor "
            "`[batch, dim]`."
        )
    if len(output.shape) != 2:
        raise ValueError(
            f"Model {model.name!r} outputs shape {output.shape}; an {kind} must return "
            "`[batch, dim]`."
        )


# === Graph functions ===


def _cosine(a, b):
    """Cosine similarity `[batch]` of two `[batch, dim]` float32 tensors; 0 for zeros."""
    a = a / tf.maximum(tf.norm(a, axis=-1, keepdims=True), _EPSILON)
    b = b / tf.maximum(tf.norm(b, axis=-1, keepdims=True), _EPSILON)
    return tf.reduce_sum(a * b, axis=-1)


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
        return net(_feed(net.input, pack(sentences)), training=False)

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

    tower = _pair_tower(model) if kind == "pair" else model

    def embed(sentences):
        return {"embedding": tf.cast(run(tower, sentences), tf.float32)}

    if kind == "pair":
        first_key, second_key = _pair_keys(model)

        def similarity(sentence_a, sentence_b):
            inputs = {
                first_key: _feed(model.input[first_key], pack(sentence_a)),
                second_key: _feed(model.input[second_key], pack(sentence_b)),
            }
            score = _single_output(model(inputs, training=False), "The pair model")
            return {"score": tf.reshape(tf.cast(score, tf.float32), [-1])}

    else:

        def similarity(sentence_a, sentence_b):
            a = embed(sentence_a)["embedding"]
            b = embed(sentence_b)["embedding"]
            return {"score": _cosine(a, b)}

    embed_entry = (embed, [_sentences_spec("sentences")])
    similarity_entry = (similarity, [_sentences_spec("sentence_a"), _sentences_spec("sentence_b")])
    if kind == "pair":
        functions["similarity"] = similarity_entry
        functions["embed"] = embed_entry
    else:
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


# === Atomic writes ===


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


def _atomic_write_dir(path, write, overwrite):
    """Runs `write(tmp_dir)` and renames `tmp_dir` to `path` once it succeeded.

    The temporary folder is created next to `path` (same filesystem, so the
    rename is atomic). When `path` exists it is first renamed aside and
    deleted only after the new folder is in place; if anything fails, the
    temporary folder is removed and an existing `path` restored.
    """
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        _check_target(path, overwrite)
        if path.exists():
            backup = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, backup)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(backup, path)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_saved_model(module, signatures, directory):
    """`tf.saved_model.save` (a separate function so that tests can make it fail)."""
    tf.saved_model.save(module, str(directory), signatures=signatures)


# === Export ===


def _check_preprocessor(preprocessor):
    for attribute in ("tokenize", "pack", "sequence_length", "get_config"):
        if not hasattr(preprocessor, attribute):
            raise TypeError(
                "`preprocessor` must be a `models.bert_tokenizer.BertPreprocessor`; received "
                f"{type(preprocessor).__name__} (no `{attribute}`)."
            )


def _with_sequence_length(preprocessor, sequence_length):
    if sequence_length is None or int(sequence_length) == preprocessor.sequence_length:
        return preprocessor
    config = preprocessor.get_config()
    config["sequence_length"] = int(sequence_length)
    return type(preprocessor).from_config(config)


def _metadata(model, preprocessor, kind, signatures, default, from_logits):
    config = preprocessor.get_config()
    tokenizer = {k: v for k, v in config.items() if k not in ("vocabulary", "name", "dtype")}
    tokenizer.pop("trainable", None)
    tokenizer["vocabulary_size"] = len(preprocessor.vocabulary)
    tokenizer["class_name"] = type(preprocessor).__name__
    outputs = {}
    for name, function in signatures.items():
        structured = function.structured_outputs
        outputs[name] = {
            "inputs": [spec.name for spec in function.structured_input_signature[1].values()],
            "outputs": {
                key: {"dtype": value.dtype.name, "shape": value.shape.as_list()}
                for key, value in structured.items()
            },
        }
    import kd_keras

    return {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "model_name": model.name,
        "serving_default": default,
        "signatures": outputs,
        "from_logits": from_logits if kind == "classifier" else None,
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
):
    """Writes `model` and its tokenizer as a raw-text SavedModel.

    Args:
        model: a built functional `keras.Model` taking the token ids of
            `preprocessor` (`token_ids` alone, `0` = padding, or a dict with
            `token_ids` / `segment_ids` / `padding_mask`), or a pair model
            taking `{"sentence_a": ..., "sentence_b": ...}` (or `first` /
            `second`) of those.
        preprocessor: the `BertPreprocessor` whose ids the model was trained
            on.
        path: the SavedModel folder to write.
        kind: `"auto"` (see `infer_model_kind`), `"encoder"`, `"pair"` or
            `"classifier"`.
        sequence_length: int or `None`. Maximum tokens per sentence (special
            tokens included); defaults to the preprocessor's.
        from_logits: classifiers only: whether the model returns logits
            (`softmax` is applied in the export) or probabilities. `None`:
            probabilities when the output layer ends with a softmax (or a
            sigmoid for one output), else logits.
        overwrite: bool. Replace an existing export at `path`.

    Returns:
        An `ExportResult`.
    """
    path = pathlib.Path(path).absolute()
    _check_target(path, overwrite)
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; call it on data first.")
    _check_preprocessor(preprocessor)
    preprocessor = _with_sequence_length(preprocessor, sequence_length)
    if kind == "auto":
        kind = infer_model_kind(model)
    elif kind not in MODEL_KINDS:
        raise ValueError(f"`kind` must be 'auto' or one of {MODEL_KINDS}; received {kind!r}.")
    elif not _is_functional(model):
        infer_model_kind(model)  # raises the subclassed-model error
    if kind == "pair":
        keys = _pair_keys(model)
        if keys is None:
            raise ValueError(
                f"Model {model.name!r} is not a pair model: its inputs must be a dict with keys "
                f"{_PAIR_KEYS[0]} or {_PAIR_KEYS[1]}; received "
                f"{sorted(model.input) if isinstance(model.input, dict) else model.input}."
            )
        for key in keys:
            _check_sentence_inputs(model.input[key], f"Pair model {model.name!r} (input {key!r})")
        tower = _pair_tower(model)
        _check_sentence_inputs(tower.input, f"Encoder tower {tower.name!r}")
    else:
        _check_sentence_inputs(model.input, f"Model {model.name!r}")
    _check_output_rank(model, kind)
    if kind == "classifier" and from_logits is None:
        from_logits = not _ends_with(model, ("softmax", "sigmoid"))

    module, signatures = _build_module(model, preprocessor, kind, from_logits)
    default = DEFAULT_SIGNATURES[kind]
    names = tuple(name for name in signatures if name != "serving_default")
    metadata = _metadata(model, preprocessor, kind, signatures, default, from_logits)

    def write(directory):
        _write_saved_model(module, signatures, directory)
        metadata_path = directory / METADATA_PATH
        metadata_path.parent.mkdir(parents=True, exist_ok=True)
        metadata_path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")

    _atomic_write_dir(path, write, overwrite)
    return ExportResult(
        path=path,
        kind=kind,
        signatures=names,
        serving_default=default,
        size_bytes=directory_size(path),
        variables=tuple(v.name for v in module.model_variables),
    )


def _unwrap(distiller_or_student):
    """`(student, teacher or None)` of a `Distiller` or a bare student."""
    student = getattr(distiller_or_student, "student", None)
    if isinstance(student, keras.Model) and hasattr(distiller_or_student, "teacher"):
        return student, distiller_or_student.teacher
    if isinstance(distiller_or_student, keras.Model):
        return distiller_or_student, None
    raise TypeError(
        "`distiller_or_student` must be a kd_keras.Distiller or a keras.Model; received "
        f"{type(distiller_or_student).__name__}."
    )


def export_student(
    distiller_or_student,
    path,
    preprocessor=None,
    kind="auto",
    sequence_length=None,
    from_logits=None,
    overwrite=False,
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

    Returns:
        An `ExportResult`.
    """
    student, teacher = _unwrap(distiller_or_student)
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
    )


def export_teacher(teacher, path, sequence_length=None, overwrite=False):
    """Exports a teacher encoder in the student's format (`embed`, `similarity`).

    So that teacher and student can be served and benchmarked the same way.

    Args:
        teacher: a `models.teachers.Teacher` (with a preprocessor), or a spec
            for `models.teachers.load_teacher`: `"default"` (the offline
            all-MiniLM-L6-v2) or a path.
        path: the SavedModel folder to write.
        sequence_length: int or `None`. Overrides the teacher's maximum
            length.
        overwrite: bool. Replace an existing export at `path`.

    Returns:
        An `ExportResult`.
    """
    path = pathlib.Path(path).absolute()
    _check_target(path, overwrite)
    if isinstance(teacher, (str, os.PathLike)):
        from models.teachers import load_teacher

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
    )


# === Students saved with their preprocessor ===


def preprocessor_sidecar_path(model_path):
    """Where `save_student` puts the preprocessor of `model_path`.

    Args:
        model_path: path of a `.keras` file.

    Returns:
        `pathlib.Path`: `student.keras` -> `student.preprocessor.json`.
    """
    model_path = pathlib.Path(model_path)
    return model_path.with_name(model_path.stem + _SIDECAR_SUFFIX)


def save_preprocessor(preprocessor, path):
    """Writes a `BertPreprocessor`'s full config (vocabulary included) as JSON.

    Args:
        preprocessor: a `BertPreprocessor`.
        path: the JSON file to write.

    Returns:
        The path, as a `pathlib.Path`.
    """
    _check_preprocessor(preprocessor)
    path = pathlib.Path(path)
    document = {
        "format": PREPROCESSOR_FORMAT,
        "preprocessor": keras.saving.serialize_keras_object(preprocessor),
    }
    write_text_atomic(path, json.dumps(document, ensure_ascii=False) + "\n")
    return path


def write_text_atomic(path, text):
    """Writes `text` (UTF-8) to `path` through a temporary file and a rename.

    A reader sees the old file or the whole new one, never a partial write;
    the temporary file is removed if the write fails.

    Returns:
        The path, as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_preprocessor(path):
    """Reads a preprocessor written by `save_preprocessor`.

    Args:
        path: the JSON file.

    Returns:
        A `BertPreprocessor`.
    """
    import models.bert_tokenizer  # noqa: F401  (registers BertPreprocessor)

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Preprocessor file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(document, dict) or document.get("format") != PREPROCESSOR_FORMAT:
        raise ValueError(
            f"{path}: not a kd-keras preprocessor file (expected format {PREPROCESSOR_FORMAT!r})."
        )
    return keras.saving.deserialize_keras_object(document["preprocessor"])


def save_student(student, path, preprocessor):
    """Saves a student as a `.keras` file with its preprocessor next to it.

    The preprocessor goes to `preprocessor_sidecar_path(path)` (e.g.
    `student.keras` -> `student.preprocessor.json`), which `load_student`
    and `kd-keras export --student` read.

    Args:
        student: a `keras.Model` (or a `Distiller`: its student is saved).
        path: the `.keras` file to write.
        preprocessor: the `BertPreprocessor` whose ids the student takes.

    Returns:
        `(model_path, sidecar_path)`, as `pathlib.Path`s.
    """
    student, _ = _unwrap(student)
    path = pathlib.Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Student file must end with .keras; received {path}.")
    _check_preprocessor(preprocessor)
    student.save(str(path))
    return path, save_preprocessor(preprocessor, preprocessor_sidecar_path(path))


def load_student(path, preprocessor=None):
    """Loads a `.keras` student and its preprocessor.

    A `.keras` file holding a whole `Distiller` gives its student (and the
    teacher's preprocessor when no sidecar is found).

    Args:
        path: a `.keras` file.
        preprocessor: a `BertPreprocessor`, or a path to a preprocessor JSON
            file; `None` reads the sidecar written by `save_student`.

    Returns:
        `(student, preprocessor)`.
    """
    # Register the project's serializable classes before loading.
    import kd_keras.distiller  # noqa: F401
    import models.bert_tokenizer  # noqa: F401
    import models.heads  # noqa: F401
    import models.layers  # noqa: F401
    import models.teachers  # noqa: F401

    path = pathlib.Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Student file must be a .keras file; received {path}.")
    if not path.is_file():
        raise FileNotFoundError(f"Student model file not found: {path}")
    loaded = keras.saving.load_model(str(path))
    student, teacher = _unwrap(loaded)
    if isinstance(preprocessor, (str, os.PathLike)):
        preprocessor = load_preprocessor(preprocessor)
    if preprocessor is None:
        sidecar = preprocessor_sidecar_path(path)
        if sidecar.is_file():
            preprocessor = load_preprocessor(sidecar)
        else:
            preprocessor = getattr(student, "preprocessor", None) or getattr(
                teacher, "preprocessor", None
            )
        if preprocessor is None:
            raise FileNotFoundError(
                f"No preprocessor for {path}: {sidecar} does not exist. Save the student with "
                "kd_keras.export.save_student, or give the preprocessor (--preprocessor JSON, "
                "--vocabulary vocab.txt, or --preprocessor-from-teacher SPEC)."
            )
    return student, preprocessor
