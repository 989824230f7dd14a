"""BiLSTM sentence encoder: the small, fast student of the BERT-to-DSSM recipe."""

import keras
import numpy as np

from .heads import build_pair_model
from .pooling import AttentionPooling, MaskedPooling


def token_embedding(vocabulary_size, embedding_dim, embeddings_initializer="uniform"):
    """The masked token embedding of the BiLSTM students (id 0 = padding).

    An array initializer is assigned to the weights once the layer is built,
    never put in its config: a `.keras` file stores the table once, in its
    weights file (a `keras.initializers.Constant(array)` would copy it into
    `config.json` as text). The config then records `"zeros"`, which, like
    `Constant`, draws no random numbers, so the layers built after it get the
    same random weights either way.

    Args:
        vocabulary_size: int.
        embedding_dim: int.
        embeddings_initializer: initializer name or object, or a
            `[vocabulary_size, embedding_dim]` array (e.g. teacher embeddings
            reduced by PCA, `models.student_init`).

    Returns:
        `keras.layers.Embedding` named `token_embedding`, `mask_zero=True`
        (built, when given an array).
    """
    table = None
    if hasattr(embeddings_initializer, "shape"):
        shape = tuple(np.shape(embeddings_initializer))
        if shape != (vocabulary_size, embedding_dim):
            raise ValueError(
                f"`embeddings_initializer` array has shape {shape}; expected "
                f"({vocabulary_size}, {embedding_dim}) (vocabulary_size, embedding_dim)."
            )
        table, embeddings_initializer = np.asarray(embeddings_initializer), "zeros"
    layer = keras.layers.Embedding(
        vocabulary_size,
        embedding_dim,
        mask_zero=True,
        embeddings_initializer=embeddings_initializer,
        name="token_embedding",
    )
    if table is not None:
        layer.build()
        layer.embeddings.assign(table.astype(layer.embeddings.dtype))
    return layer


def build_bilstm_encoder(
    vocabulary_size,
    embedding_dim=128,
    hidden_dim=128,
    output_dim=None,
    dropout=0.1,
    embeddings_initializer="uniform",
    normalize=False,
    embedding_skip=False,
    num_layers=1,
    pooling="mean",
    name="bilstm_encoder",
):
    """Token ids to a sentence embedding: embedding, BiLSTM(s), masked pooling.

    Args:
        vocabulary_size: int. Token id 0 is padding (as `[PAD]` in BERT
            WordPiece vocabularies) and is masked.
        embedding_dim: int. Width of the token embeddings.
        hidden_dim: int. Units of each LSTM direction.
        output_dim: int or `None`. Width of a final linear projection (to
            match a teacher's embedding width); `None` keeps `2 * hidden_dim`.
        dropout: float. Dropout on the token embeddings.
        embeddings_initializer: initializer or a `[vocabulary_size,
            embedding_dim]` array (e.g. projected teacher embeddings).
        normalize: bool. L2-normalize the output (as sentence-embedding
            teachers such as all-MiniLM-L6-v2 do).
        embedding_skip: bool. Also pool the token embeddings themselves and
            concatenate them to the pooled BiLSTM states before the
            projection: a static bag-of-embeddings path (a Model2Vec-style
            sentence vector when the embeddings come from vocabulary
            distillation) beside the contextual one, at almost no cost.
        num_layers: int >= 1. Stacked BiLSTM layers (each takes the previous
            one's states).
        pooling: `"mean"` (masked mean of the last layer's states) or
            `"attention"` (`AttentionPooling`: learned weights per token).
        name: str.

    Returns:
        A functional `keras.Model` from `token_ids` `[B, S]` int32 to
        `[B, output_dim or 2 * hidden_dim]`.
    """
    if pooling not in ("mean", "attention"):
        raise ValueError(f"`pooling` must be 'mean' or 'attention'; received {pooling!r}.")
    if int(num_layers) < 1:
        raise ValueError(f"`num_layers` must be >= 1; received {num_layers!r}.")
    # === Layers ===
    embedding = token_embedding(vocabulary_size, embedding_dim, embeddings_initializer)
    lstms = [
        keras.layers.Bidirectional(
            keras.layers.LSTM(hidden_dim, return_sequences=True),
            name="bilstm" if i == 0 else f"bilstm_{i + 1}",
        )
        for i in range(int(num_layers))
    ]
    if pooling == "attention":
        pool = AttentionPooling(name="pooling")
    else:
        pool = MaskedPooling("mean", name="pooling")
    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedded = embedding(token_ids)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(embedded)
    for lstm in lstms:
        x = lstm(x)
    x = pool(x)
    if embedding_skip:
        bag = MaskedPooling("mean", name="embedding_pooling")(embedded)
        x = keras.layers.Concatenate(name="skip")([x, bag])
    if output_dim is not None:
        x = keras.layers.Dense(output_dim, name="projection")(x)
    if normalize:
        x = keras.layers.UnitNormalization(name="normalize")(x)
    return keras.Model(token_ids, x, name=name)


def build_siamese_bilstm(vocabulary_size, name="siamese_bilstm", **encoder_kwargs):
    """Siamese BiLSTM pair model: one shared tower, cosine similarity.

    Args:
        vocabulary_size: int.
        name: str.
        **encoder_kwargs: passed to `build_bilstm_encoder`.

    Returns:
        `keras.Model` with inputs `{"sentence_a": ids, "sentence_b": ids}` and
        output the cosine score `[B, 1]`.
    """
    return build_pair_model(build_bilstm_encoder(vocabulary_size, **encoder_kwargs), name=name)
