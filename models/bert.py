"""BERT sentence encoders built with KerasHub (random weights; see
`models.teachers` for pretrained checkpoints)."""

import keras_hub

from models.heads import build_sentence_embedder


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
        `models.heads.build_sentence_embedder` (mean pooling, not
        normalized) around a new `BertBackbone`: a model from
        `{"token_ids", "segment_ids", "padding_mask"}` to `[B, hidden_dim]`.
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
    return build_sentence_embedder(backbone, pooling="mean", normalize=False, name=name)
