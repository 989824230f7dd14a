"""`BertEncoder`: KerasHub's `BertBackbone` with the checkpoint's own activation.

KerasHub's `BertBackbone` always uses the tanh approximation of GELU in its
feedforward blocks, while Google BERT and Hugging Face `"gelu"` use the exact
(erf) GELU; the difference moves sentence embeddings by ~1e-4. `BertEncoder`
takes the activation and the layer-norm epsilon as config, so they survive a
`.keras` save and reload (the class is registered as
`kd_keras>BertEncoder`).

The module also maps weights between the encoder and the Google BERT
checkpoint naming (`bert/encoder/layer_0/attention/self/query/kernel`, ...),
which the Hugging Face and Google loaders both go through.
"""

import keras
import keras_hub
import numpy as np

__all__ = [
    "BertEncoder",
    "get_google_weights",
    "hf_to_google_weights",
    "set_google_weights",
]

# Activation names of HF `hidden_act` and Google `hidden_act`.
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_exact": "gelu",
    "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
    "gelu_fast": "gelu_approximate",
    "gelu_approximate": "gelu_approximate",
    "relu": "relu",
    "tanh": "tanh",
    "silu": "silu",
    "swish": "silu",
}


def _activation_fn(name):
    try:
        name = _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unsupported hidden activation {name!r}; expected one of {sorted(_ACTIVATIONS)}."
        ) from None
    if name == "gelu":
        return lambda x: keras.activations.gelu(x, approximate=False)
    if name == "gelu_approximate":
        return lambda x: keras.activations.gelu(x, approximate=True)
    return keras.activations.get(name)


@keras.saving.register_keras_serializable(package="kd_keras")
class BertEncoder(keras_hub.models.BertBackbone):
    """A BERT encoder whose activation and layer-norm epsilon are config.

    Same inputs (`token_ids`, `segment_ids`, `padding_mask`, int32
    `[batch, length]`) and outputs (`sequence_output`, `pooled_output`) as
    `keras_hub.models.BertBackbone`.

    Args:
        vocabulary_size: int. Size of the token vocabulary.
        num_layers: int. Number of transformer layers.
        num_heads: int. Attention heads per layer.
        hidden_dim: int. Hidden size.
        intermediate_dim: int. Feedforward inner size.
        dropout: float. Dropout rate (training only).
        max_sequence_length: int. Number of position embeddings.
        num_segments: int. Number of segment (token type) ids.
        hidden_activation: str. Feedforward activation: `"gelu"` (exact, erf,
            as HF and Google BERT), `"gelu_approximate"` (tanh, KerasHub's),
            or `"relu"`, `"tanh"`, `"silu"`; HF's names (`"gelu_new"`, ...)
            are accepted too.
        layer_norm_epsilon: float. Epsilon of all layer normalizations.
        dtype: dtype policy of the layers.
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        hidden_activation="gelu",
        layer_norm_epsilon=1e-12,
        dtype=None,
        **kwargs,
    ):
        activation = _activation_fn(hidden_activation)
        super().__init__(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            max_sequence_length=max_sequence_length,
            num_segments=num_segments,
            dtype=dtype,
            **kwargs,
        )
        # The functional graph calls these layers again on every run, so
        # setting the attributes changes the computation.
        for layer in self.transformer_layers:
            layer.activation = activation
            layer._feedforward_intermediate_dense.activation = activation
            layer._self_attention_layer_norm.epsilon = layer_norm_epsilon
            layer._feedforward_layer_norm.epsilon = layer_norm_epsilon
        self.embeddings_layer_norm.epsilon = layer_norm_epsilon
        self.hidden_activation = hidden_activation
        self.layer_norm_epsilon = layer_norm_epsilon

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_activation": self.hidden_activation,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


def _google_variables(encoder):
    """`(google_name, keras_variable, to_keras, from_keras)` of every weight."""

    def same(x, shape):
        return np.reshape(x, shape)

    def identity(x):
        return x

    entries = [
        ("bert/embeddings/word_embeddings", encoder.token_embedding.embeddings),
        ("bert/embeddings/token_type_embeddings", encoder.segment_embedding.embeddings),
        (
            "bert/embeddings/position_embeddings",
            encoder.position_embedding.position_embeddings,
        ),
        ("bert/embeddings/LayerNorm/gamma", encoder.embeddings_layer_norm.gamma),
        ("bert/embeddings/LayerNorm/beta", encoder.embeddings_layer_norm.beta),
    ]
    rows = [(name, var, same, identity) for name, var in entries]
    for i, block in enumerate(encoder.transformer_layers):
        prefix = f"bert/encoder/layer_{i}"
        attention = block._self_attention_layer
        for part, dense in (
            ("query", attention.query_dense),
            ("key", attention.key_dense),
            ("value", attention.value_dense),
        ):
            rows.append((f"{prefix}/attention/self/{part}/kernel", dense.kernel, same, _merge_in))
            rows.append((f"{prefix}/attention/self/{part}/bias", dense.bias, same, _merge_all))
        rows += [
            (
                f"{prefix}/attention/output/dense/kernel",
                attention.output_dense.kernel,
                same,
                _merge_out,
            ),
            (f"{prefix}/attention/output/dense/bias", attention.output_dense.bias, same, identity),
        ]
        for name, var in (
            ("attention/output/LayerNorm/gamma", block._self_attention_layer_norm.gamma),
            ("attention/output/LayerNorm/beta", block._self_attention_layer_norm.beta),
            ("intermediate/dense/kernel", block._feedforward_intermediate_dense.kernel),
            ("intermediate/dense/bias", block._feedforward_intermediate_dense.bias),
            ("output/dense/kernel", block._feedforward_output_dense.kernel),
            ("output/dense/bias", block._feedforward_output_dense.bias),
            ("output/LayerNorm/gamma", block._feedforward_layer_norm.gamma),
            ("output/LayerNorm/beta", block._feedforward_layer_norm.beta),
        ):
            rows.append((f"{prefix}/{name}", var, same, identity))
    pooled = encoder.pooled_dense
    rows.append(("bert/pooler/dense/kernel", pooled.kernel, same, identity))
    rows.append(("bert/pooler/dense/bias", pooled.bias, same, identity))
    return rows


def _merge_in(x):  # q/k/v kernel [H, heads, d] -> [H, H]
    return np.reshape(x, (x.shape[0], -1))


def _merge_all(x):  # q/k/v bias [heads, d] -> [H]
    return np.reshape(x, (-1,))


def _merge_out(x):  # output kernel [heads, d, H] -> [H, H]
    return np.reshape(x, (-1, x.shape[-1]))


def set_google_weights(encoder, get_tensor, optional=("bert/pooler/dense/kernel",)):
    """Assigns Google-named weights to a `BertBackbone`/`BertEncoder`.

    Args:
        encoder: the Keras BERT backbone.
        get_tensor: callable `name -> np.ndarray` (Google layout: kernels
            `[in, out]`); raises `KeyError` for a missing name.
        optional: names that may be missing (with their bias): the pooler,
            which sentence-transformers checkpoints often lack.

    Returns:
        The list of names that were missing and left at their initial value.
    """
    missing = []
    skip_prefixes = []
    for name, variable, to_keras, _ in _google_variables(encoder):
        if any(name.startswith(p) for p in skip_prefixes):
            missing.append(name)
            continue
        try:
            value = np.asarray(get_tensor(name))
        except KeyError:
            if name in optional:
                skip_prefixes.append(name.rsplit("/", 1)[0] + "/")
                missing.append(name)
                continue
            raise KeyError(f"Checkpoint has no weight {name!r}.") from None
        shape = tuple(variable.shape)
        if value.size != int(np.prod(shape)) or (value.ndim == len(shape) and value.shape != shape):
            raise ValueError(
                f"Weight {name!r} has shape {value.shape}; the encoder expects {shape}."
            )
        variable.assign(to_keras(value.astype(variable.dtype), shape))
    return missing


def get_google_weights(encoder):
    """The encoder's weights under Google BERT names, as NumPy arrays.

    Args:
        encoder: a `BertBackbone`/`BertEncoder`.

    Returns:
        dict `name -> np.ndarray` (kernels `[in, out]`).
    """
    return {
        name: from_keras(keras.ops.convert_to_numpy(variable))
        for name, variable, _, from_keras in _google_variables(encoder)
    }


def hf_to_google_weights(tensors):
    """Renames a Hugging Face `BertModel` state dict to Google BERT names.

    Linear weights (`[out, in]` in PyTorch) are transposed to kernels
    (`[in, out]`); `LayerNorm.weight/bias` (or `gamma/beta`) become
    `LayerNorm/gamma/beta`. A leading `bert.` (task models) is dropped; other
    prefixes (`cls.`, `classifier.`) and buffers are ignored.

    Args:
        tensors: dict `name -> np.ndarray` from `model.safetensors`.

    Returns:
        dict `google_name -> np.ndarray`.
    """
    out = {}
    for key, value in tensors.items():
        if key.startswith("bert."):
            key = key[len("bert.") :]
        if not key.startswith(("embeddings.", "encoder.", "pooler.")):
            continue
        if key.endswith("position_ids"):
            continue
        parts = key.split(".")
        if parts[0] == "encoder" and parts[1] == "layer":
            parts = ["encoder", f"layer_{parts[2]}"] + parts[3:]
        leaf = parts[-1]
        if parts[-2] == "LayerNorm":
            leaf = {"weight": "gamma", "bias": "beta"}.get(leaf, leaf)
            parts[-1] = leaf
        elif parts[0] == "embeddings" and leaf == "weight":
            parts = parts[:-1]
        elif leaf == "weight":
            parts[-1] = "kernel"
            value = np.transpose(value)
        out["bert/" + "/".join(parts)] = np.asarray(value)
    return out
