"""BiLSTM text classifier: the student of the SST-2 recipe (Tang et al. 2019)."""

import keras
from keras import ops

from models.bilstm import token_embedding
from models.layers import MaskedMeanPooling

__all__ = ["CLASSIFIER_POOLINGS", "MaskedMaxPooling", "build_bilstm_classifier"]

CLASSIFIER_POOLINGS = ("max", "mean", "last")


@keras.saving.register_keras_serializable(package="kd_keras")
class MaskedMaxPooling(keras.layers.Layer):
    """Maximum of a sequence over its unmasked positions.

    Formula:

    ```
    out[b] = max_{s : mask[b, s]} x[b, s]     (0 for a row with no position)
    ```

    Called as `layer(sequence)` with `sequence` `[B, S, H]` and the Keras mask
    that an `Embedding(mask_zero=True)` attached, or as `layer(sequence,
    mask)`.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, sequence, mask=None):
        if mask is None:
            return ops.max(sequence, axis=1)
        keep = ops.expand_dims(ops.cast(mask, "bool"), -1)
        lowest = ops.cast(-1e9, sequence.dtype)
        pooled = ops.max(ops.where(keep, sequence, lowest), axis=1)
        any_kept = ops.any(keep, axis=1)
        return ops.where(any_kept, pooled, ops.zeros_like(pooled))

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


def build_bilstm_classifier(
    vocabulary_size,
    num_classes=2,
    embedding_dim=300,
    hidden_dim=150,
    dense_dim=200,
    pooling="max",
    dropout=0.1,
    embeddings_initializer="uniform",
    name="bilstm_classifier",
):
    """Token ids to class logits: embedding, BiLSTM, pooling, ReLU layer, logits.

    The single-sentence student of Tang et al. 2019 ("Distilling
    Task-Specific Knowledge from BERT into Simple Neural Networks"): a
    bidirectional LSTM over word embeddings, a ReLU hidden layer and a linear
    output (logits, no softmax), so that it can be trained against a
    teacher's logits (`kd_keras.losses.LogitMSE`) or softened distribution
    (`ForwardKL`). Id 0 is padding (the `[PAD]` of BERT vocabularies) and is
    masked, so the student can take the token ids of the teacher's
    `BertPreprocessor` directly and be exported with it
    (`kd_keras.export.export_student(..., kind="classifier")`).

    Args:
        vocabulary_size: int.
        num_classes: int. Size of the logits.
        embedding_dim: int. Width of the token embeddings.
        hidden_dim: int. Units of each LSTM direction.
        dense_dim: int or `None`. Width of the ReLU layer before the logits;
            `None` or 0 leaves it out.
        pooling: `"max"` (masked max over positions), `"mean"` (masked mean)
            or `"last"` (the final states of both directions, as Tang et al.).
        dropout: float. Dropout on the embeddings and before the logits.
        embeddings_initializer: initializer name or object, or a
            `[vocabulary_size, embedding_dim]` array (e.g. the teacher's token
            embeddings projected by PCA).
        name: str.

    Returns:
        A functional `keras.Model` from int32 `token_ids` `[B, S]` to float
        logits `[B, num_classes]`.
    """
    if pooling not in CLASSIFIER_POOLINGS:
        raise ValueError(f"`pooling` must be one of {CLASSIFIER_POOLINGS}; received {pooling!r}.")
    # === Layers ===
    embedding = token_embedding(vocabulary_size, embedding_dim, embeddings_initializer)
    lstm = keras.layers.Bidirectional(
        keras.layers.LSTM(hidden_dim, return_sequences=pooling != "last"), name="bilstm"
    )
    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = embedding(token_ids)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    x = lstm(x)
    if pooling == "max":
        x = MaskedMaxPooling(name="pooling")(x)
    elif pooling == "mean":
        x = MaskedMeanPooling(name="pooling")(x)
    if dense_dim:
        x = keras.layers.Dense(dense_dim, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(dropout, name="output_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(token_ids, logits, name=name)
