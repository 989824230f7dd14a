"""Heads on top of a BERT-family encoder: embeddings, pair similarity, classes.

Every head is a plain Keras layer or functional model, so it can be trained
(`fit`), saved (`.keras`), and used as a frozen teacher inside
`kd_keras.Distiller` (which sets `trainable = False` on the teacher).
"""

import keras
from keras import ops

__all__ = [
    "CosineSimilarity",
    "SentenceEmbedding",
    "SimilarityLogits",
    "bert_inputs",
    "build_classifier",
    "build_pair_similarity_model",
    "build_sentence_embedder",
    "pool_encoder_outputs",
]

POOLING_MODES = ("mean", "cls", "max")


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


@keras.saving.register_keras_serializable(package="kd_keras")
class SentenceEmbedding(keras.layers.Layer):
    """Pools token vectors into one vector per sentence.

    As sentence-transformers' `Pooling` (+ `Normalize`):
    - `"mean"`: `sum(x * mask) / max(sum(mask), 1e-9)` over the sequence;
    - `"cls"`: the first token's vector;
    - `"max"`: the maximum over non-padding tokens (padding set to -1e9);
    then optionally `x / max(||x||_2, 1e-12)`.

    Args:
        pooling: str, one of `"mean"`, `"cls"`, `"max"`.
        normalize: bool. L2-normalize the pooled vectors.

    Call arguments:
        sequence_output: float `[batch, length, dim]`.
        padding_mask: int or bool `[batch, length]`, 1 for real tokens.
    """

    def __init__(self, pooling="mean", normalize=False, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLING_MODES:
            raise ValueError(f"`pooling` must be one of {POOLING_MODES}; received {pooling!r}.")
        self.pooling = pooling
        self.normalize = bool(normalize)

    def call(self, sequence_output, padding_mask):
        if self.pooling == "cls":
            pooled = sequence_output[:, 0, :]
        else:
            mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence_output.dtype)
            if self.pooling == "mean":
                total = ops.sum(sequence_output * mask, axis=1)
                pooled = total / ops.maximum(ops.sum(mask, axis=1), 1e-9)
            else:
                pooled = ops.max(sequence_output * mask + (1.0 - mask) * -1e9, axis=1)
        if self.normalize:
            norm = ops.sqrt(ops.sum(ops.square(pooled), axis=-1, keepdims=True))
            pooled = pooled / ops.maximum(norm, 1e-12)
        return pooled

    def compute_output_shape(self, sequence_output_shape, padding_mask_shape):
        return (sequence_output_shape[0], sequence_output_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"pooling": self.pooling, "normalize": self.normalize})
        return config


@keras.saving.register_keras_serializable(package="kd_keras")
class CosineSimilarity(keras.layers.Layer):
    """Cosine similarity of two batches of vectors: `[batch]`.

    `cos = <a / max(|a|, eps), b / max(|b|, eps)>`, as
    `sentence_transformers.util.cos_sim` computes it (eps = 1e-12).
    """

    def call(self, a, b):
        a = a / ops.maximum(ops.norm(a, axis=-1, keepdims=True), 1e-12)
        b = b / ops.maximum(ops.norm(b, axis=-1, keepdims=True), 1e-12)
        return ops.sum(a * b, axis=-1)

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
        cosine = ops.reshape(cosine, (-1, 1))
        centred = self.scale * (cosine - self.threshold)
        return ops.concatenate([-centred, centred], axis=-1)

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
        pooling: `"mean"`, `"cls"`, `"max"` (a `SentenceEmbedding` layer
            named `pooling`) or `"pooled"` (BERT's pooler output).
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
    return SentenceEmbedding(pooling, normalize, name="pooling")(
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


def build_pair_similarity_model(
    embedder, output="cosine", scale=10.0, threshold=0.0, name="pair_similarity"
):
    """A siamese model: one embedder (shared weights) on both sentences of a pair.

    Args:
        embedder: model from BERT inputs to sentence vectors (e.g.
            `build_sentence_embedder(...)` or a `Teacher`).
        output: `"cosine"` (`[batch]`), `"logits"` (`[batch, 2]`, see
            `SimilarityLogits`), or `"both"` (a dict with both).
        scale: float, for the logits.
        threshold: float, for the logits.
        name: model name.

    Returns:
        `keras.Model` taking `{"first": bert_inputs, "second": bert_inputs}`.
    """
    if output not in ("cosine", "logits", "both"):
        raise ValueError(f"`output` must be 'cosine', 'logits' or 'both'; received {output!r}.")
    first, second = bert_inputs("first_"), bert_inputs("second_")
    cosine = CosineSimilarity(name="cosine")(embedder(first), embedder(second))
    logits = SimilarityLogits(scale, threshold, name="logits")(cosine)
    outputs = {"cosine": cosine, "logits": logits, "both": {"cosine": cosine, "logits": logits}}
    return keras.Model({"first": first, "second": second}, outputs[output], name=name)


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
        pooled = SentenceEmbedding(pooling, False, name="pooling")(
            outputs["sequence_output"], inputs["padding_mask"]
        )
    pooled = keras.layers.Dropout(dropout, name="classifier_dropout")(pooled)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name="logits",
    )(pooled)
    return keras.Model(inputs, logits, name=name)
