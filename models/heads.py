"""Heads on top of an encoder: sentence embeddings, pair similarity, classes.

Every head is a plain Keras layer or functional model, so it can be trained
(`fit`), saved (`.keras`), and used as a frozen teacher inside
`kd_keras.Distiller` (which sets `trainable = False` on the teacher).

The one home of the pair ideas: `cosine_similarity` and `similarity_logits`
(functions on tensors, used by the layers here, the teacher-side targets of
the sentence-pair recipe and the exported `similarity` signature) and
`build_pair_model`, the one siamese pair model, whose inputs are always
`{"sentence_a": ..., "sentence_b": ...}`.
"""

import keras
from keras import ops

from .pooling import MaskedPooling

__all__ = [
    "PAIR_KEYS",
    "PAIR_OUTPUTS",
    "CosineSimilarity",
    "SimilarityLogits",
    "bert_inputs",
    "build_classifier",
    "build_pair_model",
    "build_sentence_embedder",
    "cosine_similarity",
    "pool_encoder_outputs",
    "similarity_logits",
]

PAIR_KEYS = ("sentence_a", "sentence_b")
PAIR_OUTPUTS = ("embeddings", "score", "logits")


def bert_inputs(prefix=""):
    """Symbolic BERT inputs: int32 `token_ids`, `segment_ids`, `padding_mask`.

    Args:
        prefix: str prepended to the input names (for two-tower models).

    Returns:
        dict of `keras.Input`, each `[batch, None]`.
    """
    return {
        key: keras.Input(shape=(None,), dtype="int32", name=prefix + key)
        for key in ("token_ids", "segment_ids", "padding_mask")
    }


def cosine_similarity(a, b, epsilon=1e-12):
    """Row-wise cosine similarity of two `[batch, dim]` tensors: `[batch]`.

    Formula:

    ```
    cos = <a / max(|a|, eps), b / max(|b|, eps)>
    ```

    as `sentence_transformers.util.cos_sim` computes it, so a zero vector
    scores 0, never NaN. Keras ops: runs in a model, a `tf.function` or a
    `tf.data` pipeline alike.
    """
    a = a / ops.maximum(ops.norm(a, axis=-1, keepdims=True), epsilon)
    b = b / ops.maximum(ops.norm(b, axis=-1, keepdims=True), epsilon)
    return ops.sum(a * b, axis=-1)


def similarity_logits(cosine, scale=10.0, threshold=0.0):
    """Two-class (not similar, similar) logits `[batch, 2]` from cosines.

    Formula:

    ```
    logits = scale * [threshold - cos, cos - threshold]
    ```

    so that `softmax(logits)[..., 1] = sigmoid(2 * scale * (cos - threshold))`
    (see `SimilarityLogits`).

    Args:
        cosine: float `[batch]` or `[batch, 1]`.
        scale: float.
        threshold: float.
    """
    centred = scale * (ops.reshape(cosine, (-1, 1)) - threshold)
    return ops.concatenate([-centred, centred], axis=-1)


@keras.saving.register_keras_serializable(package="kd_keras")
class CosineSimilarity(keras.layers.Layer):
    """`cosine_similarity` as a layer: two batches of vectors to `[batch]`."""

    def call(self, a, b):
        return cosine_similarity(a, b)

    def compute_output_shape(self, a_shape, b_shape):
        return (a_shape[0],)


@keras.saving.register_keras_serializable(package="kd_keras")
class SimilarityLogits(keras.layers.Layer):
    """Two-class (not similar, similar) logits from a cosine similarity.

    `logits = scale * [threshold - cos, cos - threshold]`, so that
    `softmax(logits)[..., 1] = sigmoid(2 * scale * (cos - threshold))`.
    This is the soft-label form used to distil a pair model (a BERT
    cross-encoder or a sentence-embedding teacher) into a siamese student:
    the teacher's two-class probabilities are the soft targets of the
    student's logits, built from the student's own cosine the same way. The
    scale turns cosines in `[-1, 1]` into confident logits (`scale=1` gives
    probabilities between 0.12 and 0.88 only); `threshold` is the cosine
    judged 50/50.

    Args:
        scale: float. Multiplies the centred cosine.
        threshold: float. Cosine at which both classes are equally likely.

    Call arguments:
        cosine: float `[batch]` (or `[batch, 1]`).

    Returns:
        float `[batch, 2]`.
    """

    def __init__(self, scale=10.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.threshold = float(threshold)

    def call(self, cosine):
        return similarity_logits(cosine, self.scale, self.threshold)

    def compute_output_shape(self, cosine_shape):
        return (cosine_shape[0], 2)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "threshold": self.threshold})
        return config


def _encode(encoder, inputs, training=None):
    outputs = encoder(inputs, training=training) if training is not None else encoder(inputs)
    if not isinstance(outputs, dict):
        raise ValueError(
            "The encoder must return a dict with `sequence_output` (a BERT "
            f"backbone); it returned {type(outputs).__name__}."
        )
    return outputs


def pool_encoder_outputs(outputs, padding_mask, pooling="mean", normalize=True):
    """One vector per sentence from a BERT encoder's output dict (symbolic).

    Args:
        outputs: dict with `sequence_output` (and `pooled_output` for
            `pooling="pooled"`).
        padding_mask: int `[batch, length]`, 1 for real tokens.
        pooling: `"mean"`, `"cls"`, `"max"` (a `MaskedPooling` layer named
            `pooling`) or `"pooled"` (BERT's pooler output).
        normalize: bool. L2-normalize (for `"pooled"`, a `UnitNormalization`
            layer named `normalize`).

    Returns:
        float `[batch, dim]`.
    """
    if pooling == "pooled":
        pooled = outputs["pooled_output"]
        if normalize:
            pooled = keras.layers.UnitNormalization(name="normalize")(pooled)
        return pooled
    return MaskedPooling(pooling, normalize, name="pooling")(
        outputs["sequence_output"], padding_mask
    )


def build_sentence_embedder(encoder, pooling="mean", normalize=True, name="sentence_embedder"):
    """A model from BERT inputs to one vector per sentence.

    Args:
        encoder: a BERT backbone (`BertEncoder`, `keras_hub.models.BertBackbone`)
            returning `sequence_output` (and `pooled_output` for
            `pooling="pooled"`).
        pooling: `"mean"`, `"cls"`, `"max"`, or `"pooled"` (BERT's tanh
            pooler on [CLS]).
        normalize: bool. L2-normalize the embeddings.
        name: model name.

    Returns:
        `keras.Model`: dict of int32 `[batch, length]` -> float `[batch, dim]`.
    """
    inputs = bert_inputs()
    outputs = _encode(encoder, inputs)
    pooled = pool_encoder_outputs(outputs, inputs["padding_mask"], pooling, normalize)
    return keras.Model(inputs, pooled, name=name)


def _pair_inputs(encoder):
    """Two copies of `encoder`'s inputs, keyed `sentence_a` and `sentence_b`.

    A single input is named after its key (as Keras wants for dict inputs);
    the entries of a nested input get the suffix `_a` or `_b`.
    """
    structure = encoder.input

    def like(spec, key):
        name = f"{spec.name}_{key[-1]}" if keras.tree.is_nested(structure) else key
        return keras.Input(shape=spec.shape[1:], dtype=spec.dtype, name=name)

    return {
        key: keras.tree.map_structure(lambda s, key=key: like(s, key), structure)
        for key in PAIR_KEYS
    }


def build_pair_model(encoder, outputs="score", scale=10.0, threshold=0.0, name="pair_model"):
    """A siamese pair model: one `encoder` tower (shared weights) on both sentences.

    Args:
        encoder: functional `keras.Model` from one sentence's inputs (token
            ids, or a dict of BERT inputs) to its embedding `[B, D]`.
        outputs: one name or a tuple of names from `PAIR_OUTPUTS`:
            `"score"`, the cosine similarity `[B, 1]` (the shape Keras'
            regression losses and metrics expect); `"logits"`, the two-class
            form `[B, 2]` (`SimilarityLogits`); `"embeddings"`, both
            sentences' embeddings `[B, 2, D]`. A tuple gives a dict.
        scale, threshold: float. Of the logits.
        name: str.

    Returns:
        `keras.Model` with inputs `{"sentence_a": ..., "sentence_b": ...}`,
        each shaped like the encoder's inputs.
    """
    names = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    unknown = [n for n in names if n not in PAIR_OUTPUTS]
    if not names or unknown:
        raise ValueError(f"`outputs` must name some of {PAIR_OUTPUTS}; received {outputs!r}.")
    inputs = _pair_inputs(encoder)
    ea, eb = encoder(inputs["sentence_a"]), encoder(inputs["sentence_b"])
    cosine = CosineSimilarity(name="cosine")(ea, eb)
    width = ea.shape[-1]
    built = {}
    if "embeddings" in names:
        built["embeddings"] = keras.layers.Concatenate(axis=1, name="embeddings")(
            [keras.layers.Reshape((1, width))(ea), keras.layers.Reshape((1, width))(eb)]
        )
    if "score" in names:
        built["score"] = keras.layers.Reshape((1,), name="score")(cosine)
    if "logits" in names:
        built["logits"] = SimilarityLogits(scale, threshold, name="logits")(cosine)
    result = built[outputs] if isinstance(outputs, str) else {n: built[n] for n in names}
    return keras.Model(inputs, result, name=name)


def build_classifier(encoder, num_classes, pooling="pooled", dropout=0.1, name="classifier"):
    """A classification head on an encoder: the teacher to fine-tune first.

    `logits = Dense(num_classes)(Dropout(pooled))`, as Hugging Face
    `BertForSequenceClassification` with `pooling="pooled"`. Sentence pairs
    are classified cross-encoder style: pack them into one input with
    `BertPreprocessor((first, second))`. Train it with `fit` and a
    from-logits loss, then pass it to `Distiller` as the teacher.

    Args:
        encoder: a BERT backbone.
        num_classes: int. Number of classes (the logits' size).
        pooling: `"pooled"`, `"cls"`, `"mean"` or `"max"`.
        dropout: float. Dropout before the output layer.
        name: model name.

    Returns:
        `keras.Model`: dict of int32 BERT inputs -> float `[batch, num_classes]`.
    """
    inputs = bert_inputs()
    outputs = _encode(encoder, inputs)
    if pooling == "pooled":
        pooled = outputs["pooled_output"]
    else:
        pooled = MaskedPooling(pooling, False, name="pooling")(
            outputs["sequence_output"], inputs["padding_mask"]
        )
    pooled = keras.layers.Dropout(dropout, name="classifier_dropout")(pooled)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name="logits",
    )(pooled)
    return keras.Model(inputs, logits, name=name)
