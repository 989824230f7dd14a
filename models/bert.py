"""BERT sentence encoders built with KerasHub (random weights; see
`models.teachers` for pretrained checkpoints)."""

import keras
import keras_hub

from models.layers import MaskedMeanPooling


def bert_sentence_encoder(backbone, name="bert_sentence_encoder"):
    """Wraps a KerasHub `BertBackbone` with masked mean pooling.

    Args:
        backbone: `keras_hub.models.BertBackbone`.
        name: str.

    Returns:
        `keras.Model` from `{"token_ids", "segment_ids", "padding_mask"}`
        (`[B, S]` each) to the mean of the unpadded token states `[B, H]`.
    """
    inputs = {
        "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input(shape=(None,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
    }
    sequence = backbone(inputs)["sequence_output"]
    pooled = MaskedMeanPooling(name="pooling")(sequence, inputs["padding_mask"])
    return keras.Model(inputs, pooled, name=name)


def build_tiny_bert_encoder(
    vocabulary_size,
    num_layers=2,
    num_heads=2,
    hidden_dim=64,
    intermediate_dim=128,
    max_sequence_length=128,
    dropout=0.1,
    name="tiny_bert_encoder",
):
    """A small random-weight BERT sentence encoder (mean pooled).

    Args:
        vocabulary_size: int.
        num_layers: int. Transformer layers.
        num_heads: int. Attention heads.
        hidden_dim: int. Width of the token states and the embedding.
        intermediate_dim: int. Width of the feed-forward layers.
        max_sequence_length: int. Longest input the position embeddings cover.
        dropout: float.
        name: str.

    Returns:
        A `bert_sentence_encoder` around a new `BertBackbone`.
    """
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        max_sequence_length=max_sequence_length,
        dropout=dropout,
    )
    return bert_sentence_encoder(backbone, name=name)
