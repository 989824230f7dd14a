"""A small BERT student, optionally started from a subset of the teacher's layers.

`build_tiny_bert_student` makes a `BertEncoder` (KerasHub's `BertBackbone`
with the teacher's activation - exact GELU for Hugging Face / Google BERT
checkpoints - and layer-norm epsilon) with fewer, and possibly narrower,
layers, and a sentence-embedding head on it. It takes the same int32 input
dict as the teacher, so the teacher's `BertPreprocessor` feeds it.

When it has the teacher's widths (hidden size, heads, feedforward size) it
is initialized as DistilBERT was: the token, position and segment embeddings,
the embedding layer norm and the pooler are copied from the teacher, and
student layer `i` gets a copy of teacher layer `layer_indices[i]`. A narrower
feedforward block (same hidden size and heads) is copied pruned: each layer
keeps the teacher's `intermediate_dim` feedforward units of largest
`|w_in[:, j]| * |w_out[j, :]|` (the weight norms into and out of unit `j`).
"""

import numpy as np

from .bert_encoder import BertEncoder
from .heads import build_sentence_embedder

__all__ = ["build_tiny_bert_student", "default_layer_indices", "feedforward_units_to_keep"]

_FFN_IN = "feedforward_intermediate_dense"
_FFN_OUT = "feedforward_output_dense"


def default_layer_indices(teacher_layers, num_layers):
    """Teacher layers to copy: evenly spaced, first and last included.

    DistilBERT keeps every other layer of BERT-base (`[0, 2, ..., 10]`).
    Here the first layer is always kept (it reads the copied embeddings, so
    its inputs are unchanged) and, from two layers on, the last one too (the
    pooled teacher embedding is read from its output space, so the student
    starts closest to its target); the others are evenly spaced in between,
    rounded half up. For example 6 -> 2: `[0, 5]`, 6 -> 3: `[0, 3, 5]`,
    12 -> 6: `[0, 2, 4, 7, 9, 11]`; `num_layers == teacher_layers` keeps all.

    Args:
        teacher_layers: int. Number of teacher layers.
        num_layers: int. Number of student layers, at most `teacher_layers`.

    Returns:
        list of int, increasing.
    """
    teacher_layers, num_layers = int(teacher_layers), int(num_layers)
    if not 1 <= num_layers <= teacher_layers:
        raise ValueError(f"Cannot pick {num_layers} layers out of the teacher's {teacher_layers}.")
    if num_layers == 1:
        return [0]
    span, steps = teacher_layers - 1, num_layers - 1
    return [(2 * i * span + steps) // (2 * steps) for i in range(num_layers)]


def _teacher_encoder(teacher):
    encoder = getattr(teacher, "encoder", teacher)
    if not hasattr(encoder, "transformer_layers") or not hasattr(encoder, "token_embedding"):
        raise ValueError(
            "`teacher` must be a `Teacher` around a BERT backbone (`BertEncoder`, "
            f"`keras_hub.models.BertBackbone`) or such a backbone; received "
            f"{type(teacher).__name__}."
        )
    return encoder


def _assign(target, source, what):
    """Copies `source`'s weights into `target` (same layer class)."""
    if len(target.weights) != len(source.weights):
        raise ValueError(f"Cannot copy {what}: different numbers of weights.")
    for destination, value in zip(target.weights, source.weights, strict=True):
        if destination.name != value.name or tuple(destination.shape) != tuple(value.shape):
            raise ValueError(
                f"Cannot copy {what}: {value.name} {tuple(value.shape)} does not match "
                f"{destination.name} {tuple(destination.shape)}."
            )
        destination.assign(value)


def _ffn_weight(layer, sublayer, kind):
    for variable in layer.weights:
        if variable.path.endswith(f"{sublayer}/{kind}"):
            return variable
    raise ValueError(f"{layer.name} has no {sublayer}/{kind} weight.")


def feedforward_units_to_keep(layer, units):
    """Indices (increasing) of the `units` feedforward units of `layer` to keep.

    A unit's score is the product of the norms of its input column and its
    output row, `|w_in[:, j]| * |w_out[j, :]|`: a first-order estimate of how
    much it can move the layer's output. Ties keep the lower index.

    Args:
        layer: a BERT transformer layer (KerasHub `TransformerEncoder`).
        units: int, at most the layer's feedforward width.
    """
    w_in = np.asarray(_ffn_weight(layer, _FFN_IN, "kernel").numpy())
    w_out = np.asarray(_ffn_weight(layer, _FFN_OUT, "kernel").numpy())
    if not 1 <= units <= w_in.shape[1]:
        raise ValueError(f"Cannot keep {units} of {w_in.shape[1]} feedforward units.")
    score = np.linalg.norm(w_in, axis=0) * np.linalg.norm(w_out, axis=1)
    return np.sort(np.argsort(-score, kind="stable")[:units])


def _assign_layer(target, source, what):
    """Copies a transformer layer, pruning the feedforward block if narrower."""
    target_units = _ffn_weight(target, _FFN_IN, "bias").shape[0]
    if target_units == _ffn_weight(source, _FFN_IN, "bias").shape[0]:
        _assign(target, source, what)
        return
    keep = feedforward_units_to_keep(source, target_units)
    for destination, variable in zip(target.weights, source.weights, strict=True):
        if destination.path.split("/")[-2:] != variable.path.split("/")[-2:]:
            raise ValueError(f"Cannot copy {what}: {variable.path} is not {destination.path}.")
        value = variable.numpy()
        if destination.path.endswith(f"{_FFN_IN}/kernel"):
            value = value[:, keep]
        elif destination.path.endswith(f"{_FFN_IN}/bias"):
            value = value[keep]
        elif destination.path.endswith(f"{_FFN_OUT}/kernel"):
            value = value[keep, :]
        if tuple(destination.shape) != value.shape:
            raise ValueError(f"Cannot copy {what}: {destination.path} shapes differ.")
        destination.assign(value)


def _copy_from_teacher(student, teacher, layer_indices):
    """DistilBERT-style initialization of `student` from `teacher` (encoders)."""
    _assign(student.token_embedding, teacher.token_embedding, "the token embeddings")
    _assign(student.segment_embedding, teacher.segment_embedding, "the segment embeddings")
    positions = teacher.position_embedding.position_embeddings
    student.position_embedding.position_embeddings.assign(
        positions[: student.position_embedding.sequence_length]
    )
    _assign(student.embeddings_layer_norm, teacher.embeddings_layer_norm, "the embedding norm")
    for student_layer, index in zip(student.transformer_layers, layer_indices, strict=True):
        _assign_layer(student_layer, teacher.transformer_layers[index], f"teacher layer {index}")
    _assign(student.pooled_dense, teacher.pooled_dense, "the pooler")


def _resolve_widths(
    source,
    num_layers,
    hidden_dim,
    num_heads,
    intermediate_dim,
    layer_indices,
    vocabulary_size,
    max_sequence_length,
    copy_weights,
):
    """The student encoder's sizes, and the teacher layers to copy (`None`: random).

    Defaults and checks of `build_tiny_bert_student`: see its docstring.
    """
    source_config = {} if source is None else source.get_config()
    if layer_indices is not None:
        layer_indices = [int(i) for i in layer_indices]
        if num_layers is None:
            num_layers = len(layer_indices)
    num_layers = 2 if num_layers is None else int(num_layers)

    same_width = source is not None and hidden_dim in (None, source_config["hidden_dim"])
    if hidden_dim is None:
        hidden_dim = source_config["hidden_dim"] if source is not None else 256
    hidden_dim = int(hidden_dim)
    if num_heads is None:
        num_heads = source_config["num_heads"] if same_width else max(1, hidden_dim // 64)
    if intermediate_dim is None:
        intermediate_dim = source_config["intermediate_dim"] if same_width else 4 * hidden_dim
    if vocabulary_size is None:
        if source is None:
            raise ValueError("`vocabulary_size` is required without a teacher.")
        vocabulary_size = source_config["vocabulary_size"]
    if max_sequence_length is None:
        max_sequence_length = source_config.get("max_sequence_length", 512)
    widths = {
        "vocabulary_size": int(vocabulary_size),
        "num_layers": num_layers,
        "num_heads": int(num_heads),
        "hidden_dim": hidden_dim,
        "intermediate_dim": int(intermediate_dim),
        "max_sequence_length": int(max_sequence_length),
        "num_segments": source_config.get("num_segments", 2),
    }
    copy = (
        source is not None
        and copy_weights
        and hidden_dim == source_config["hidden_dim"]
        and widths["num_heads"] == source_config["num_heads"]
        and widths["intermediate_dim"] <= source_config["intermediate_dim"]
    )
    if layer_indices is not None:
        _check_layer_indices(layer_indices, source, widths, copy, copy_weights)
    elif copy:
        layer_indices = default_layer_indices(len(source.transformer_layers), num_layers)
    if copy:
        _check_copy_sizes(widths, source_config)
    return widths, layer_indices if copy else None


def _check_layer_indices(layer_indices, source, widths, copy, copy_weights):
    if source is None:
        raise ValueError("`layer_indices` needs a teacher to copy the layers from.")
    if not copy_weights:
        raise ValueError("`layer_indices` copies teacher layers; not with `copy_weights=False`.")
    if not copy:
        config = source.get_config()
        raise ValueError(
            "`layer_indices` copies teacher layers, which needs the teacher's widths: "
            f"hidden_dim={config['hidden_dim']}, num_heads={config['num_heads']}, "
            f"intermediate_dim at most {config['intermediate_dim']}; received "
            f"{widths['hidden_dim']}, {widths['num_heads']}, {widths['intermediate_dim']}."
        )
    if len(layer_indices) != widths["num_layers"]:
        raise ValueError(
            f"`layer_indices` has {len(layer_indices)} entries for {widths['num_layers']} layers."
        )
    teacher_layers = len(source.transformer_layers)
    if any(not 0 <= i < teacher_layers for i in layer_indices):
        raise ValueError(
            f"`layer_indices` {layer_indices} out of range for a teacher with "
            f"{teacher_layers} layers."
        )
    if len(set(layer_indices)) != len(layer_indices):
        raise ValueError(f"`layer_indices` {layer_indices} has repeated layers.")


def _check_copy_sizes(widths, source_config):
    if widths["vocabulary_size"] != source_config["vocabulary_size"]:
        raise ValueError(
            f"`vocabulary_size` {widths['vocabulary_size']} differs from the teacher's "
            f"{source_config['vocabulary_size']}, whose token embeddings are copied."
        )
    if widths["max_sequence_length"] > source_config["max_sequence_length"]:
        raise ValueError(
            f"`max_sequence_length` {widths['max_sequence_length']} exceeds the teacher's "
            f"{source_config['max_sequence_length']} position embeddings."
        )


def build_tiny_bert_student(
    teacher=None,
    num_layers=None,
    hidden_dim=None,
    num_heads=None,
    intermediate_dim=None,
    layer_indices=None,
    vocabulary_size=None,
    max_sequence_length=None,
    pooling="mean",
    normalize=True,
    dropout=0.1,
    copy_weights=True,
    name="tiny_bert_student",
):
    """A small BERT sentence embedder, initialized from teacher layers when possible.

    With a `teacher` whose hidden size, number of heads and feedforward size
    the student shares (the defaults), the student copies the teacher's
    embeddings, embedding layer norm, pooler and the layers `layer_indices`
    (DistilBERT's recipe); position embeddings are truncated to
    `max_sequence_length`; a narrower feedforward block keeps the teacher's
    strongest units. With other widths (a different hidden size or number of
    heads, a wider feedforward block) the weights are random
    (`layer_indices` is then an error). The activation and layer-norm
    epsilon are always the teacher's (exact GELU and 1e-12 without one).

    Args:
        teacher: `None`, a `Teacher` or a BERT backbone (`BertEncoder`,
            `keras_hub.models.BertBackbone`).
        num_layers: int. Transformer layers; default `len(layer_indices)`,
            else 2.
        hidden_dim: int. Default: the teacher's, else 256.
        num_heads: int. Default: the teacher's when `hidden_dim` is the
            teacher's, else `max(1, hidden_dim // 64)`.
        intermediate_dim: int. Default: the teacher's when `hidden_dim` is
            the teacher's, else `4 * hidden_dim`. Narrower than the
            teacher's (same hidden size and heads): copied layers keep the
            teacher's strongest feedforward units
            (`feedforward_units_to_keep`).
        layer_indices: list of int, the teacher layer copied into each
            student layer (in order); default `default_layer_indices`.
        vocabulary_size: int. Default: the teacher's (required without one).
        max_sequence_length: int. Position embeddings; default the
            teacher's, else 512. When copying, at most the teacher's.
        pooling: `"mean"`, `"cls"`, `"max"` or `"pooled"`.
        normalize: bool. L2-normalize the embeddings.
        dropout: float. Dropout rate of the encoder (training only).
        copy_weights: bool. `False` keeps random weights even when the
            widths match (an ablation baseline).
        name: str. Model name.

    Returns:
        `keras.Model` (see `models.heads.build_sentence_embedder`) from the
        int32 BERT inputs `{token_ids, segment_ids, padding_mask}` to
        `[batch, hidden_dim]`; its `BertEncoder` is the layer named
        `"tiny_bert_encoder"`.
    """
    source = None if teacher is None else _teacher_encoder(teacher)
    widths, layer_indices = _resolve_widths(
        source,
        num_layers,
        hidden_dim,
        num_heads,
        intermediate_dim,
        layer_indices,
        vocabulary_size,
        max_sequence_length,
        copy_weights,
    )
    encoder = BertEncoder(
        **widths,
        dropout=dropout,
        # A plain KerasHub `BertBackbone` uses the tanh GELU.
        hidden_activation=getattr(source, "hidden_activation", "gelu_approximate")
        if source is not None
        else "gelu",
        layer_norm_epsilon=getattr(source, "layer_norm_epsilon", 1e-12),
        name="tiny_bert_encoder",
    )
    if layer_indices is not None:
        _copy_from_teacher(encoder, source, layer_indices)
    return build_sentence_embedder(encoder, pooling=pooling, normalize=normalize, name=name)
