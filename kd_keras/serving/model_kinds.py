"""What an exported model is: its kind, its inputs, its towers.

`infer_model_kind` tells a sentence encoder, a pair model (the siamese model of
`kd_keras.models.heads.build_pair_model`, inputs `sentence_a` and
`sentence_b`) and a classifier apart; `check_exportable` checks that a model
takes token ids or BERT inputs and returns what its kind must return, with
errors that name the model; `feed` shapes packed BERT inputs for a model.
"""

import keras
import tensorflow as tf

from kd_keras.models.heads import PAIR_KEYS

__all__ = [
    "BERT_KEYS",
    "DEFAULT_SIGNATURES",
    "MODEL_KINDS",
    "check_exportable",
    "ends_with",
    "feed",
    "infer_model_kind",
    "is_functional",
    "pair_tower",
    "single_output",
]

MODEL_KINDS = ("encoder", "pair", "classifier")
# The one `serving_default` rule: a sentence encoder, alone or inside a pair
# model, serves `embed`; a classifier serves `classify`.
DEFAULT_SIGNATURES = {"encoder": "embed", "pair": "embed", "classifier": "classify"}
BERT_KEYS = ("token_ids", "segment_ids", "padding_mask")


def is_functional(model):
    try:
        model.input  # noqa: B018
    except (AttributeError, ValueError):
        return False
    return True


def _is_pair_model(model):
    """Whether the model's inputs are exactly `{"sentence_a": ..., "sentence_b": ...}`."""
    structure = model.input
    return isinstance(structure, dict) and set(structure) == set(PAIR_KEYS)


def _output_layer(model):
    history = getattr(model.output, "_keras_history", None)
    return None if history is None else history[0]


def ends_with(model, activation_names):
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
      `sentence_b` (`kd_keras.models.heads.build_pair_model`);
    - `"classifier"`: the output layer ends with a softmax;
    - `"encoder"`: anything else. A classifier that returns logits looks
      like an encoder: pass `kind="classifier"` for it.

    Args:
        model: a functional `keras.Model`.

    Returns:
        One of `MODEL_KINDS`.
    """
    if not is_functional(model):
        raise ValueError(
            f"Model {model.name!r} has no symbolic inputs (a subclassed model?); only "
            "functional models (and Sequential models built on an `Input`) can be exported."
        )
    if _is_pair_model(model):
        return "pair"
    if ends_with(model, ("softmax",)):
        return "classifier"
    return "encoder"


def pair_tower(model):
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
    expected = f"token ids `[batch, length]` or a dict of BERT inputs {list(BERT_KEYS)}"
    if isinstance(structure, dict):
        unknown = sorted(set(structure) - set(BERT_KEYS))
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


def feed(structure, packed):
    """The packed BERT inputs, shaped as a model's `input` structure."""
    if isinstance(structure, dict):
        return {key: tf.cast(packed[key], structure[key].dtype) for key in structure}
    if isinstance(structure, (list, tuple)):
        return [tf.cast(packed["token_ids"], structure[0].dtype)]
    return tf.cast(packed["token_ids"], structure.dtype)


def single_output(outputs, what):
    """The score of a pair model's outputs: the tensor itself, or a dict's `score`."""
    if isinstance(outputs, dict):
        if "score" in outputs:
            return outputs["score"]
        raise ValueError(f"{what} returns a dict {sorted(outputs)}; expected a `score` entry.")
    if isinstance(outputs, (list, tuple)):
        raise ValueError(f"{what} returns {len(outputs)} outputs; expected one tensor.")
    return outputs


def _check_output_rank(model, kind):
    output = model.output
    if kind == "pair":
        output = single_output(output, f"Pair model {model.name!r}")
        if not (len(output.shape) == 1 or (len(output.shape) == 2 and output.shape[-1] == 1)):
            raise ValueError(
                f"Pair model {model.name!r} outputs shape {output.shape}; expected the cosine "
                "score `[batch]` or `[batch, 1]` (export a pair model built with "
                "`outputs='score'`, or export its sentence encoder)."
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


def check_exportable(model, kind):
    """Checks `model` as an export of `kind`; returns the kind (`"auto"` resolved)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; call it on data first.")
    if kind == "auto":
        kind = infer_model_kind(model)
    elif kind not in MODEL_KINDS:
        raise ValueError(f"`kind` must be 'auto' or one of {MODEL_KINDS}; received {kind!r}.")
    elif not is_functional(model):
        infer_model_kind(model)  # raises the subclassed-model error
    if kind == "pair":
        if not _is_pair_model(model):
            structure = model.input
            raise ValueError(
                f"Model {model.name!r} is not a pair model: its inputs must be a dict with keys "
                f"{PAIR_KEYS}; received "
                f"{sorted(structure) if isinstance(structure, dict) else structure}."
            )
        for key in PAIR_KEYS:
            _check_sentence_inputs(model.input[key], f"Pair model {model.name!r} (input {key!r})")
        tower = pair_tower(model)
        _check_sentence_inputs(tower.input, f"Encoder tower {tower.name!r}")
    else:
        _check_sentence_inputs(model.input, f"Model {model.name!r}")
    _check_output_rank(model, kind)
    return kind
