"""`kd_keras.quantize`: int8 copies of Keras models (Keras' own `Model.quantize`, weights only)."""

import keras
import numpy as np
import pytest

from kd_keras.quantize import QUANTIZE_MODES, check_quantize, quantize_copy


def _small_model(seed=0):
    """Embedding (masked) -> LSTM -> Dense: one layer of each fate."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(20, 6, mask_zero=True, name="table")(ids)
    x = keras.layers.LSTM(5, name="lstm")(x)
    return keras.Model(ids, keras.layers.Dense(3, name="head")(x), name="small")


def _numpy_int8(w, axis):
    """Keras' symmetric abs-max int8 of `w`, reduced over `axis`: `(q, scale)`."""
    scale = 127.0 / (np.abs(w).max(axis=axis, keepdims=True) + 1e-7)
    return np.clip(np.round(w * scale), -127, 127), scale


def test_int8_copy_computes_what_numpy_does_and_leaves_the_model_alone():
    model = _small_model()
    before = [w.copy() for w in model.get_weights()]
    quantized = quantize_copy(model)
    assert quantized.mode == "int8" and quantized.model is not model
    assert quantized.layers == ("head", "table")
    assert quantized.float_layers == ("lstm/lstm_cell",)  # LSTM cells are not quantized
    # The model given: same weights, all float32, no quantized layer.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert {w.dtype for w in model.weights} == {"float32"}
    assert all(layer.dtype_policy.quantization_mode is None for layer in model.layers)

    copy = {layer.name: layer for layer in quantized.model.layers}
    assert copy["head"].kernel.dtype == "int8" and copy["table"].embeddings.dtype == "int8"
    # By hand: the table per row, the kernel per output column; activations float32.
    table, kernel = model.get_layer("table").embeddings.numpy(), model.get_layer("head").kernel
    q_table, s_table = _numpy_int8(table, axis=-1)
    q_kernel, s_kernel = _numpy_int8(kernel.numpy(), axis=0)
    ids = np.array([[3, 7, 19, 0], [1, 0, 0, 0]], "int32")
    lstm = keras.Model(model.input, model.get_layer("lstm").output)
    hidden = lstm.predict(ids, verbose=0)  # the float32 LSTM on the float32 table...
    lstm.get_layer("table").set_weights([q_table / s_table])  # ...and on the int8 one
    hidden_int8 = lstm.predict(ids, verbose=0)
    expected = hidden_int8 @ q_kernel / s_kernel + model.get_layer("head").bias.numpy()
    np.testing.assert_allclose(quantized.model.predict(ids, verbose=0), expected, atol=1e-5)
    assert not np.allclose(hidden, hidden_int8, atol=1e-9)  # the table was rounded indeed

    metadata = quantized.metadata()
    assert metadata["mode"] == "int8" and metadata["layers"] == ["head", "table"]
    assert metadata["float32_layers"] == ["lstm/lstm_cell"] and "weights only" in metadata["scheme"]


def test_nested_models_and_subclasses():
    """Layers inside a nested model are quantized; a subclass of Dense is not (Keras
    quantizes the exact classes only)."""

    class MyDense(keras.layers.Dense):
        pass

    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(4, name="inner_dense")(inner_in), name="inner")
    outer_in = keras.Input((4,))
    outputs = MyDense(2, name="mine")(inner(outer_in))
    model = keras.Model(outer_in, outputs)
    quantized = quantize_copy(model)
    assert quantized.layers == ("inner_dense",) and quantized.float_layers == ("mine",)


def test_errors_are_one_line():
    assert check_quantize(None) is None and check_quantize("int8") == "int8" == QUANTIZE_MODES[0]
    with pytest.raises(
        ValueError, match=r"Unsupported quantize='int4': expected one of \['int8'\]"
    ):
        check_quantize("int4")
    with pytest.raises(TypeError, match="needs a keras.Model"):
        quantize_copy(lambda x: x)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = _small_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match="computes in float16"):
        quantize_copy(half)

    class Unclonable(keras.layers.Layer):
        def __init__(self, width):  # no **kwargs: from_config cannot rebuild it
            super().__init__()
            self.width = width

        def call(self, x):
            return x * self.width

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Unclonable(2)(inputs)), name="odd")
    with pytest.raises(ValueError, match="Cannot copy model 'odd' to quantize it") as error:
        quantize_copy(model)
    assert "\n" not in str(error.value)
