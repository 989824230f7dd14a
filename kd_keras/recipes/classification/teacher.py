"""The classification recipe's teacher: fine-tuned here, or given already fine-tuned.

`--teacher` names either an encoder that is fine-tuned here with a new
classification head (`fine_tune_teacher`), or a classifier that is already
fine-tuned and is used as it is (`given_classifier`): a Hugging Face
`BertForSequenceClassification` folder (`load_hf_classifier`) or a `.keras`
classifier. `open_teacher` loads it and tells the two apart
(`--teacher-kind auto`):

- `"default"`, `"m3e-small"`, a folder that is not a
  `*ForSequenceClassification`, a `Teacher` `.keras` file (with a pooling) or
  a `.keras` BERT backbone (its output has `sequence_output`): an encoder;
- a `BertForSequenceClassification` folder, or any other `.keras` model: a
  classifier, from token ids or BERT inputs to logits (or probabilities,
  when its output layer ends with a softmax) over the classes.

A given classifier's outputs are mapped onto the training file's classes
(`class_order`): by name (`id2label`, or `--teacher-classes`), or, for
integer labels `0 ... C-1`, by index. A `.keras` classifier has no class
names: its output `i` is the `i`-th training class (sorted) unless
`--teacher-classes` names them.
"""

import hashlib
import json
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from kd_keras.batching import BucketedBatches
from kd_keras.checkpoints import StopOnNonFiniteLoss
from kd_keras.models.bert_tokenizer import BertPreprocessor
from kd_keras.models.heads import bert_inputs, build_classifier
from kd_keras.models.teachers import Teacher, is_hf_classifier, load_hf_classifier, load_teacher
from kd_keras.recipes.config import ConfigError
from kd_keras.serving.model_kinds import ends_with
from kd_keras.serving.student_files import load_preprocessor, preprocessor_sidecar_path
from kd_keras.storage import atomic_path, write_json_atomic

__all__ = [
    "class_order",
    "fine_tune_teacher",
    "fine_tuned_encoder",
    "given_classifier",
    "open_teacher",
    "pack_texts",
]

_BERT_KEYS = ("token_ids", "segment_ids", "padding_mask")


def pack_texts(preprocessor, sentences, chunk=8192):
    """BERT inputs of every sentence, padded to the longest: dict of int32 arrays."""
    parts = []
    for i in range(0, len(sentences), chunk):
        packed = preprocessor.pack(preprocessor.tokenize(sentences[i : i + chunk]))
        parts.append({k: v.numpy() for k, v in packed.items()})
    width = max(p["token_ids"].shape[1] for p in parts)
    return {
        k: np.concatenate(
            [np.pad(p[k], [(0, 0), (0, width - p[k].shape[1])]) for p in parts], axis=0
        )
        for k in parts[0]
    }


# === Which teacher ===


def _is_encoder(model):
    """Whether a loaded `.keras` model is an encoder to fine-tune (not a classifier)."""
    if isinstance(model, Teacher):
        return model.pooling is not None or _is_encoder(model.encoder)
    outputs = getattr(model, "output", None)
    return isinstance(outputs, dict) and "sequence_output" in outputs


def _keras_preprocessor(model, path, sequence_length):
    """The tokenizer of a `.keras` classifier: its own, its sidecar's, or KerasHub's."""
    own = getattr(model, "preprocessor", None)
    sidecar = preprocessor_sidecar_path(path)
    if isinstance(own, BertPreprocessor):
        preprocessor = own
    elif sidecar.is_file():
        preprocessor = load_preprocessor(sidecar)
    elif hasattr(getattr(own, "tokenizer", None), "get_vocabulary"):  # a KerasHub task's
        tokenizer = own.tokenizer
        preprocessor = BertPreprocessor(
            tokenizer.get_vocabulary(),
            sequence_length=sequence_length,
            lowercase=bool(getattr(tokenizer, "lowercase", True)),
            strip_accents=getattr(tokenizer, "strip_accents", None) or None,
        )
    else:
        raise ConfigError(
            f"--teacher {path}: the classifier has no tokenizer; save it with "
            f"kd_keras.serving.save_student (a {sidecar.name} beside it) or as "
            "Teacher(model, preprocessor, pooling=None)."
        )
    config = {**preprocessor.get_config(), "sequence_length": int(sequence_length)}
    return type(preprocessor).from_config(config)


def open_teacher(c):
    """Loads `c.teacher`: `("encoder", Teacher)` or `("classifier", (model,
    preprocessor, class names or None))`."""
    spec, kind = c.teacher, c.teacher_kind
    path = pathlib.Path(spec)
    builtin = spec in ("default", "m3e-small")
    if not builtin and path.is_dir() and kind != "encoder" and is_hf_classifier(path):
        return "classifier", load_hf_classifier(path, sequence_length=c.sequence_length)
    if not builtin and path.suffix == ".keras" and path.is_file():
        model = keras.saving.load_model(str(path))
        if kind == "classifier" or (kind == "auto" and not _is_encoder(model)):
            inner = model.encoder if isinstance(model, Teacher) else model
            preprocessor = _keras_preprocessor(model, path, c.sequence_length)
            return "classifier", (inner, preprocessor, None)
        return "encoder", load_teacher(model)
    if kind == "classifier":
        raise ConfigError(
            f"--teacher {spec!r} is not a classifier to use as it is (--teacher-kind "
            "classifier): give a Hugging Face BertForSequenceClassification folder or a "
            ".keras classifier."
        )
    return "encoder", load_teacher(spec, sequence_length=c.sequence_length)


# === A classifier given already fine-tuned ===


def class_order(names, classes, source):
    """Which output of the teacher is each training class.

    Args:
        names: the teacher's class names in output order (str).
        classes: the training file's classes (sorted ints or strs).
        source: what to name in an error (the teacher).

    Returns:
        list of int: `order[i]` is the teacher output of `classes[i]`.

    Raises:
        ConfigError: the counts differ, or the names do not match the
            classes (integer classes `0 ... C-1` index the outputs).
    """
    names = [str(n) for n in names]
    shown = f"the teacher's {names} and the training data's {[str(c) for c in classes]}"
    if len(names) != len(classes):
        raise ConfigError(
            f"{source}: the teacher has {len(names)} classes, the training data "
            f"{len(classes)}: {shown}."
        )
    for key in (str, lambda name: str(name).casefold()):
        position = {key(n): i for i, n in enumerate(names)}
        if len(position) == len(names) and all(key(c) in position for c in classes):
            return [position[key(c)] for c in classes]
    if classes == list(range(len(names))):
        return list(classes)
    raise ConfigError(
        f"{source}: cannot match the classes by name ({shown}); rename the labels, or give the "
        "teacher's classes in output order with --teacher-classes."
    )


def _bert_feed(model, inputs):
    """Symbolic BERT `inputs` shaped as `model.input` (token ids alone, or a dict)."""
    structure = model.input
    if isinstance(structure, dict):
        unknown = sorted(set(structure) - set(_BERT_KEYS))
        if unknown:
            raise ConfigError(
                f"The teacher classifier takes inputs {sorted(structure)}; expected token ids "
                f"or a dict of BERT inputs {list(_BERT_KEYS)}."
            )
        return {key: inputs[key] for key in structure}
    if isinstance(structure, (list, tuple)):
        return [inputs["token_ids"]]
    return inputs["token_ids"]


def given_classifier(c, loaded, classes):
    """A given classifier as the recipe's teacher: `(model, preprocessor, info)`.

    The model maps BERT inputs to logits over `classes`, in their order
    (log-probabilities for a classifier that ends with a softmax).
    """
    model, preprocessor, names = loaded
    output = getattr(model, "output", None)
    if output is None or isinstance(output, (dict, list, tuple)) or len(output.shape) != 2:
        raise ConfigError(
            f"--teacher {c.teacher}: expected a classifier returning one tensor [batch, "
            "classes]; pass --teacher-kind encoder to fine-tune it instead."
        )
    width = int(output.shape[-1])
    if c.teacher_classes is not None:
        names = [name.strip() for name in c.teacher_classes.split(",")]
        if len(names) != width:
            raise ConfigError(
                f"--teacher-classes names {len(names)} classes; the teacher {c.teacher} has "
                f"{width} outputs."
            )
    if names is not None:
        order = class_order(names, classes, f"--teacher {c.teacher}")
    elif width != len(classes):
        raise ConfigError(
            f"--teacher {c.teacher}: the classifier has {width} outputs, the training data "
            f"{len(classes)} classes ({', '.join(str(x) for x in classes)})."
        )
    else:
        order = list(range(width))  # a .keras classifier's output i is the i-th class
    probabilities = ends_with(model, ("softmax",))
    inputs = bert_inputs()
    outputs = model(_bert_feed(model, inputs))
    if probabilities:
        outputs = keras.ops.log(keras.ops.maximum(outputs, 1e-12))
    if order != list(range(width)):
        outputs = keras.ops.take(outputs, np.asarray(order, "int32"), axis=-1)
    teacher = keras.Model(inputs, outputs, name="teacher_classifier")
    info = {
        "fine_tuned_here": False,
        "source": c.teacher,
        "class_names": None if names is None else list(names),
        "outputs": "probabilities" if probabilities else "logits",
        "order": order,
    }
    return teacher, preprocessor, info


# === An encoder fine-tuned here ===


def _teacher_settings(c, texts, labels, classes):
    """What the cached teacher classifier depends on."""
    data = hashlib.sha256(json.dumps([list(texts), labels.tolist()]).encode("utf-8"))
    return {
        "teacher": c.teacher,
        "data": data.hexdigest(),
        "classes": list(classes),
        "train_limit": c.teacher_train_limit,
        "epochs": c.teacher_epochs,
        "batch_size": c.teacher_batch_size,
        "learning_rate": c.teacher_learning_rate,
        "sequence_length": c.sequence_length,
        "seed": c.seed,
    }


def fine_tune_teacher(c, teacher, train, classes, cache_dir):
    """Fine-tunes (or reloads) the teacher classifier; returns `(model, info)`.

    A classification head (`build_classifier`, mean pooling) on
    `teacher.encoder`, trained on (a `teacher_train_limit` sample of) the
    training texts; cached as `cache_dir/teacher_classifier.keras` with its
    settings (the data's digest among them) in `teacher_classifier.json`.
    """
    train_sentences, train_labels = train
    settings = _teacher_settings(c, train_sentences, train_labels, classes)
    path = cache_dir / "teacher_classifier.keras"
    info_path = cache_dir / "teacher_classifier.json"
    if path.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("settings") == settings:
            return keras.saving.load_model(str(path)), {**info, "reused": True}
    rng = np.random.default_rng(c.seed)
    n = len(train_labels)
    limit = min(c.teacher_train_limit or n, n)
    rows = np.sort(rng.choice(n, size=limit, replace=False))
    packed = pack_texts(teacher.preprocessor, [train_sentences[i] for i in rows])
    labels = train_labels[rows]
    lengths = packed["padding_mask"].sum(axis=1)

    def make_batch(index, width):
        return {k: v[index, :width] for k, v in packed.items()}, labels[index]

    batches = BucketedBatches(make_batch, lengths, c.teacher_batch_size, seed=c.seed)
    signature = (
        {k: tf.TensorSpec((None, None), tf.int32) for k in packed},
        tf.TensorSpec((None,), tf.int32),
    )
    keras.utils.set_random_seed(c.seed)
    model = build_classifier(
        teacher.encoder, len(classes), pooling="mean", name="teacher_classifier"
    )
    # Mean pooling leaves BERT's pooler out of the graph: frozen, it has no
    # gradients to miss (Keras would warn about every step).
    pooler = getattr(teacher.encoder, "pooled_dense", None)
    if pooler is not None:
        pooler.trainable = False
    steps = len(batches) * c.teacher_epochs
    warmup = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, steps - warmup),
        alpha=0.0,
        warmup_target=c.teacher_learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        batches.dataset(signature),
        epochs=c.teacher_epochs,
        verbose=c.fit_verbose,
        callbacks=[StopOnNonFiniteLoss()],
        shuffle=False,  # the batches shuffle themselves (Keras would warn that it ignores this)
    )
    seconds = time.perf_counter() - start
    with atomic_path(path) as tmp:
        model.save(str(tmp))
    info = {"settings": settings, "train_examples": int(limit), "train_seconds": seconds}
    write_json_atomic(info_path, info)
    return model, {**info, "reused": False}


def _bert_encoders(model):
    """The BERT encoders (layers with a `token_embedding`) inside a model, nested too."""
    found = []
    for layer in getattr(model, "layers", ()):
        if hasattr(layer, "token_embedding"):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += _bert_encoders(layer)
    return found


def fine_tuned_encoder(classifier, preprocessor):
    """The fine-tuned encoder inside `classifier` as a mean-pooled `Teacher`.

    For a classifier fine-tuned here (`build_classifier(..., pooling="mean")`)
    its output is the classifier's features (the input of its logits
    layer), not normalized; for a given one, the mean of its encoder's
    sequence output.
    """
    encoders = _bert_encoders(classifier)
    if len(encoders) != 1:
        raise ValueError(
            f"Expected one BERT encoder inside {classifier.name!r}; found {len(encoders)}."
        )
    return Teacher(encoders[0], preprocessor, pooling="mean", normalize=False)
