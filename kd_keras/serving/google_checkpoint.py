"""A BERT encoder or teacher written as a Google BERT / bert4keras checkpoint folder.

The layout is Google's (and that of SimBERT and the Chinese BERTs), which
`kd_keras.models.teachers.load_teacher` reads back:

```
bert_config.json          # vocab_size, hidden_size, num_hidden_layers, ...
bert_model.ckpt.index     # a TF1 `Saver` checkpoint with variables named
bert_model.ckpt.data-*    #   bert/embeddings/word_embeddings, ...
vocab.txt
checkpoint
kd_keras_pipeline.json    # tokenizer, pooling and length (other readers ignore it)
```
"""

import json

import numpy as np
import tensorflow as tf

from kd_keras.models.bert_encoder import get_google_weights
from kd_keras.models.google_bert import CHECKPOINT_NAME, PIPELINE_FILE
from kd_keras.storage import atomic_directory

__all__ = ["save_google_checkpoint", "save_teacher_as_google_checkpoint"]

_TOKENIZER_KEYS = (
    "lowercase",
    "strip_accents",
    "tokenize_chinese_chars",
    "clean_text",
    "max_chars_per_word",
)


def _bert_config(encoder):
    return {
        "attention_probs_dropout_prob": float(encoder.dropout),
        "hidden_act": getattr(encoder, "hidden_activation", "gelu_approximate"),
        "hidden_dropout_prob": float(encoder.dropout),
        "hidden_size": int(encoder.hidden_dim),
        "initializer_range": 0.02,
        "intermediate_size": int(encoder.intermediate_dim),
        "layer_norm_eps": float(getattr(encoder, "layer_norm_epsilon", 1e-12)),
        "max_position_embeddings": int(encoder.max_sequence_length),
        "num_attention_heads": int(encoder.num_heads),
        "num_hidden_layers": int(encoder.num_layers),
        "type_vocab_size": int(encoder.num_segments),
        "vocab_size": int(encoder.vocabulary_size),
    }


def save_google_checkpoint(encoder, directory, vocabulary=None, pipeline=None):
    """Writes an encoder as a Google BERT checkpoint folder, atomically.

    The variables are saved under their Google names with TF1 `Saver`
    naming (no object-graph suffixes), so Google BERT, bert4keras and
    `kd_keras.models.google_bert.load_google_bert` read them back. The
    folder is written beside `directory` and renamed into place
    (`kd_keras.storage.atomic_directory`); an existing `directory` is
    replaced whole.

    Args:
        encoder: a `BertEncoder` or `keras_hub.models.BertBackbone`.
        directory: output folder.
        vocabulary: optional list of tokens, written to `vocab.txt`.
        pipeline: optional JSON-able dict written to `kd_keras_pipeline.json`
            (tokenizer and pooling settings).

    Returns:
        The folder, as a `pathlib.Path`.
    """
    config = _bert_config(encoder)
    weights = get_google_weights(encoder)
    names = sorted(weights)

    def write(tmp):
        tf.raw_ops.SaveV2(
            prefix=str(tmp / CHECKPOINT_NAME),
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=[tf.constant(np.asarray(weights[n], dtype="float32")) for n in names],
        )
        (tmp / "checkpoint").write_text(
            f'model_checkpoint_path: "{CHECKPOINT_NAME}"\n'
            f'all_model_checkpoint_paths: "{CHECKPOINT_NAME}"\n',
            encoding="utf-8",
        )
        (tmp / "bert_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
        if vocabulary is not None:
            (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocabulary), "utf-8")
        if pipeline is not None:
            (tmp / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=2) + "\n", "utf-8")

    return atomic_directory(directory, write, replace=True)


def save_teacher_as_google_checkpoint(teacher, directory):
    """Writes a BERT `Teacher` as a Google BERT checkpoint folder.

    Writes `bert_config.json`, `bert_model.ckpt.*`, `vocab.txt` and
    `kd_keras_pipeline.json` (tokenizer, pooling and length settings), so
    `load_teacher(directory)` rebuilds the same teacher.

    Args:
        teacher: a `Teacher` with a preprocessor, whose encoder is a BERT backbone.
        directory: output folder.

    Returns:
        The folder, as a `pathlib.Path`.
    """
    preprocessor = getattr(teacher, "preprocessor", None)
    if preprocessor is None:
        raise ValueError("This teacher has no preprocessor: its vocabulary cannot be written.")
    config = preprocessor.get_config()
    pipeline = {
        "pooling": teacher.pooling,
        "normalize": teacher.normalize,
        "sequence_length": preprocessor.sequence_length,
        "tokenizer": {k: config[k] for k in _TOKENIZER_KEYS},
    }
    return save_google_checkpoint(
        teacher.encoder, directory, vocabulary=preprocessor.vocabulary, pipeline=pipeline
    )
