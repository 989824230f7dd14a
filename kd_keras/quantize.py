"""int8 copies of Keras models: Keras' own `Model.quantize`, weights only.

`quantize_copy(model, "int8")` clones `model` (the model given is never
changed), copies its weights, and calls Keras' `Model.quantize` on the clone
with `keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)`:

- `Dense`, `EinsumDense`, `Embedding` and `ReversibleEmbedding` layers (at any
  depth: inside a nested encoder, a pair model's shared tower, a KerasHub
  backbone's transformer blocks) store their kernel / table as int8 with one
  float32 scale per output channel (per row for an embedding table), the
  symmetric abs-max scheme of Keras;
- everything else keeps float32 weights: LSTM / GRU cells, layer
  normalizations, KerasHub's `PositionEmbedding`, and any subclass of the
  layers above (Keras quantizes the exact classes only);
- activations stay float32: each quantized layer multiplies its float32 input
  by the int8 kernel cast to float32 and divides the result by the scales.

Formula, for a quantized `Dense` with kernel `W [in, out]`:

```
scale[j] = 127 / (max_i |W[i, j]| + 1e-7)
Q[i, j]  = round(W[i, j] * scale[j])           (int8)
y        = (x @ float32(Q)) / scale + b
```

Why weights only: Keras' default int8 also quantizes each input row and
multiplies int8 by int8. On the TensorFlow CPU backend that matmul
(`BatchMatMulV3` int8 -> int32) has no oneDNN kernel and runs several times
slower than the float32 one, and `EinsumDense` (attention projections) with a
dynamic sequence length falls back to a float32 `Einsum` anyway. Weights-only
int8 runs float32 matmuls (plus the casts of the kernels, so it is no faster
than float32), stores about a quarter of the weight bytes, and stays closer to
float32 (no rounding of activations).
"""

import dataclasses
import warnings

import keras

__all__ = ["QUANTIZE_MODES", "Quantized", "check_quantize", "quantize_copy"]

QUANTIZE_MODES = ("int8",)
SCHEME = (
    "weights only: symmetric abs-max int8 per output channel (per row for embedding "
    "tables), float32 scales; activations float32 (keras Model.quantize, "
    "Int8QuantizationConfig(activation_quantizer=None))"
)


def check_quantize(quantize):
    """Returns `quantize` checked: `None` (float32) or one of `QUANTIZE_MODES`.

    Raises:
        ValueError: any other value, in one line.
    """
    if quantize is None or quantize in QUANTIZE_MODES:
        return quantize
    raise ValueError(
        f"Unsupported quantize={quantize!r}: expected one of {list(QUANTIZE_MODES)} "
        "(or None for float32)."
    )


@dataclasses.dataclass(frozen=True)
class Quantized:
    """An int8 copy of a model and what was quantized in it.

    Attributes:
        model: the quantized copy (a new `keras.Model`).
        mode: `"int8"`.
        layers: tuple of the quantized layers' paths (`layer.path`).
        float_layers: tuple of the paths of the layers with weights that
            stay float32 (LSTM cells, layer normalizations, ...).
    """

    model: object
    mode: str
    layers: tuple
    float_layers: tuple

    def metadata(self):
        """The JSON-able record an export or a labels manifest keeps."""
        return {
            "mode": self.mode,
            "scheme": SCHEME,
            "layers": list(self.layers),
            "float32_layers": list(self.float_layers),
        }


def _quantizable_types():
    return (
        keras.layers.Dense,
        keras.layers.EinsumDense,
        keras.layers.Embedding,
        keras.layers.ReversibleEmbedding,
    )


def _leaf_layers(model):
    # The walk `Model.quantize` itself does: every layer at any depth, each
    # once (a shared tower too); only leaves hold their own weights.
    for layer in model._flatten_layers(include_self=False):
        if len(list(layer._flatten_layers())) == 1:
            yield layer


def _first_line(error):
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _clone(model):
    """A new model of the same config with the same weights (never `model` itself)."""
    try:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    except Exception as e:
        raise ValueError(
            f"Cannot copy model {model.name!r} to quantize it ({_first_line(e)}); int8 needs "
            "a model that keras.models.clone_model can rebuild from its layers' configs."
        ) from None
    return copy


def quantize_copy(model, mode="int8"):
    """An int8 copy of `model`, weights only; `model` is left as it was.

    Args:
        model: a built `keras.Model` (functional, or a functional subclass
            such as `Teacher`: the copy is then a plain functional model of
            the same layers, without the subclass' attributes).
        mode: `"int8"`.

    Returns:
        A `Quantized`. A model with no quantizable layer (a BiLSTM without a
        projection, say) still gets a copy, all float32 (`layers` empty).

    Raises:
        ValueError: an unsupported `mode`, a float16 model (Keras' int8
            layers refuse float16 compute), or a model that cannot be cloned.

    Example:

    ```python
    import keras
    from kd_keras.quantize import quantize_copy

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    quantized = quantize_copy(model)
    assert quantized.layers == ("dense",) and model.layers[1].kernel.dtype == "float32"
    ```
    """
    if check_quantize(mode) is None:
        raise ValueError("quantize_copy needs a mode: 'int8'.")
    if not isinstance(model, keras.Model):
        raise TypeError(f"int8 quantization needs a keras.Model; received {type(model).__name__}.")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; call it on data first.")
    float16 = [layer.path for layer in _leaf_layers(model) if layer.compute_dtype == "float16"]
    if float16:
        raise ValueError(
            f"Model {model.name!r} computes in float16 ({float16[0]}, ...); Keras' int8 layers "
            "need float32 or bfloat16 compute."
        )
    copy = _clone(model)
    types = _quantizable_types()
    chosen = [
        layer
        for layer in _leaf_layers(copy)
        if type(layer) in types and layer.dtype_policy.quantization_mode is None
    ]
    if chosen:
        ids = {id(layer) for layer in chosen}
        config = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
        with warnings.catch_warnings():
            # NumPy 2's note on Keras' own conversion of each kernel, once per layer.
            warnings.filterwarnings("ignore", message="__array__ implementation doesn't")
            copy.quantize(mode, config=config, filters=lambda layer: id(layer) in ids)
    layers = tuple(sorted(layer.path for layer in chosen))
    float_layers = tuple(
        sorted(
            layer.path
            for layer in _leaf_layers(copy)
            if layer.weights and layer.dtype_policy.quantization_mode is None
        )
    )
    return Quantized(model=copy, mode=mode, layers=layers, float_layers=float_layers)
