"""BiLSTM text classifier: the student of the SST-2 recipe (Tang et al. 2019)."""

import keras

from .bilstm import token_embedding
from .pooling import MaskedPooling

__all__ = ["CLASSIFIER_POOLINGS", "build_bilstm_classifier"]

CLASSIFIER_POOLINGS = ("max", "mean", "last")


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
    if pooling in ("max", "mean"):
        x = MaskedPooling(pooling, name="pooling")(x)
    if dense_dim:
        x = keras.layers.Dense(dense_dim, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(dropout, name="output_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(token_ids, logits, name=name)
