"""Google BERT / bert4keras TF checkpoints: read and write.

The directory layout is Google's (and that of SimBERT and the Chinese BERTs):

```
bert_config.json          # vocab_size, hidden_size, num_hidden_layers, ...
bert_model.ckpt.index     # a TF1 `Saver` checkpoint with variables named
bert_model.ckpt.data-*    #   bert/embeddings/word_embeddings,
vocab.txt                 #   bert/encoder/layer_0/attention/self/query/kernel, ...
checkpoint                # optional
```

`kd_keras.serving.save_google_checkpoint` writes that layout (plus
`kd_keras_pipeline.json` with the tokenizer and pooling settings, which other
readers ignore).
"""

import json
import pathlib

import tensorflow as tf

from .bert_encoder import BertEncoder, set_google_weights

__all__ = [
    "PIPELINE_FILE",
    "encoder_from_bert_config",
    "find_checkpoint",
    "load_google_bert",
    "read_json",
]

PIPELINE_FILE = "kd_keras_pipeline.json"
CHECKPOINT_NAME = "bert_model.ckpt"
_REQUIRED_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


def read_json(path):
    """Reads a JSON object, with errors that name the file.

    Args:
        path: file path.

    Returns:
        The decoded dict.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"Missing file: {path}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason}).") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: malformed JSON ({e.msg}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}.")
    return value


def encoder_from_bert_config(config, source="config"):
    """Builds a `BertEncoder` from a Google `bert_config.json` or HF `config.json`.

    Both use the same key names (`vocab_size`, `hidden_size`, ...).

    Args:
        config: the decoded config dict.
        source: name of the config file, for error messages.

    Returns:
        An uninitialized `BertEncoder`.
    """
    missing = [k for k in _REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"{source}: missing BERT config keys {missing}.")
    try:
        return BertEncoder(
            vocabulary_size=int(config["vocab_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            hidden_dim=int(config["hidden_size"]),
            intermediate_dim=int(config["intermediate_size"]),
            dropout=float(config.get("hidden_dropout_prob", 0.1)),
            max_sequence_length=int(config.get("max_position_embeddings", 512)),
            num_segments=int(config.get("type_vocab_size", 2)),
            hidden_activation=config.get("hidden_act", "gelu"),
            layer_norm_epsilon=float(config.get("layer_norm_eps", 1e-12)),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: invalid BERT config ({e}).") from None


def find_checkpoint(directory):
    """The checkpoint prefix in a Google BERT directory.

    Args:
        directory: the directory.

    Returns:
        The prefix (e.g. `dir/bert_model.ckpt`) as a string.
    """
    directory = pathlib.Path(directory)
    preferred = directory / CHECKPOINT_NAME
    if pathlib.Path(str(preferred) + ".index").exists():
        return str(preferred)
    latest = tf.train.latest_checkpoint(str(directory))
    if latest:
        return latest
    indexes = sorted(directory.glob("*.index"))
    if len(indexes) == 1:
        return str(indexes[0])[: -len(".index")]
    if not indexes:
        raise FileNotFoundError(f"No TF checkpoint (*.index) in {directory}.")
    raise ValueError(f"Several checkpoints in {directory}: {[p.name for p in indexes]}.")


def load_google_bert(directory):
    """Loads the encoder of a Google BERT checkpoint directory.

    Args:
        directory: folder with `bert_config.json` and `bert_model.ckpt.*`.

    Returns:
        `(encoder, config)`: the `BertEncoder` with the checkpoint's weights
        and the decoded `bert_config.json`.
    """
    directory = pathlib.Path(directory)
    config_path = directory / "bert_config.json"
    config = read_json(config_path)
    encoder = encoder_from_bert_config(config, source=str(config_path))
    prefix = find_checkpoint(directory)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"Cannot read checkpoint {prefix}: {e}") from None
    names = set(reader.get_variable_to_shape_map())

    def get_tensor(name):
        if name not in names:
            raise KeyError(name)
        return reader.get_tensor(name)

    try:
        set_google_weights(encoder, get_tensor)
    except (KeyError, ValueError) as e:
        raise ValueError(f"Checkpoint {prefix}: {e.args[0]}") from None
    return encoder, config
