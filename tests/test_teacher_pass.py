"""The teacher pass: output order with length bucketing, pairs, the on-disk cache."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import teacher_pass
from kd_keras.models.heads import bert_inputs
from kd_keras.teacher_pass import CacheError, cache_teacher_outputs, run_teacher

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
SENTENCES = [" ".join("abcdefghij"[: (i * 7) % 10 + 1] * ((i % 5) + 1)) for i in range(37)] + [
    "z",
    "",
    "q r s",
]


@pytest.fixture(scope="module")
def teacher(make_tiny_teacher):
    return make_tiny_teacher(hidden_dim=8, intermediate_dim=16, sequence_length=64)


def one_by_one(teacher, sentences, second=None):
    """Reference: each sentence (or pair) alone, unpadded, in a plain loop."""
    forward = tf.function(lambda inputs: teacher(inputs), reduce_retracing=True)
    preprocessor = teacher.preprocessor
    first_ids = preprocessor.tokenize(sentences)
    second_ids = None if second is None else preprocessor.tokenize(second)
    rows = []
    for i in range(len(sentences)):
        inputs = preprocessor.pack(
            first_ids[i : i + 1], None if second is None else second_ids[i : i + 1]
        )
        assert inputs["padding_mask"].numpy().all()
        rows.append(forward(inputs).numpy()[0])
    return np.stack(rows)


class BatchWidth(keras.layers.Layer):
    """For every row, the padded width of the batch it runs in."""

    def call(self, token_ids):
        width = keras.ops.shape(token_ids)[1]
        return keras.ops.cast(keras.ops.ones_like(token_ids[:, :1]) * width, "float32")

    def compute_output_shape(self, token_ids_shape):
        return (token_ids_shape[0], 1)


def width_model():
    inputs = bert_inputs()
    return keras.Model(inputs, BatchWidth()(inputs["token_ids"]))


@pytest.fixture(scope="module")
def expected(teacher):
    return one_by_one(teacher, SENTENCES)


def test_bucketed_outputs_in_input_order(teacher, expected):
    bucketed = run_teacher(teacher, SENTENCES, batch_size=8)
    padded = run_teacher(teacher, SENTENCES, batch_size=8, bucketing=False, pad_to=64)
    np.testing.assert_allclose(bucketed, expected, atol=1e-5)
    np.testing.assert_allclose(padded, expected, atol=1e-5)


def test_batches_are_padded_only_to_their_longest_row(teacher):
    preprocessor = teacher.preprocessor
    lengths = preprocessor.tokenize(SENTENCES).row_lengths().numpy() + 2
    widths = run_teacher(width_model(), SENTENCES, preprocessor=preprocessor, batch_size=8)[:, 0]
    assert (widths >= lengths).all()
    assert (widths % 8 == 0).all()
    assert widths.max() < 64
    # Each row's batch holds rows of similar length: its width is that of
    # its own length rounded to 8, or of a longer row in the same batch.
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), 8):
        rows = order[start : start + 8]
        assert (widths[rows] == -(-lengths[rows].max() // 8) * 8).all()
    fixed = run_teacher(
        width_model(), SENTENCES, preprocessor=preprocessor, bucketing=False, pad_to=64
    )
    assert (fixed == 64).all()


def test_pairs_cross_and_separate(teacher):
    pairs = [(SENTENCES[i], SENTENCES[-i - 1]) for i in range(10)]
    first, second = run_teacher(teacher, pairs, pair_encoding="separate", batch_size=4)
    np.testing.assert_allclose(first, one_by_one(teacher, [a for a, _ in pairs]), atol=1e-5)
    np.testing.assert_allclose(second, one_by_one(teacher, [b for _, b in pairs]), atol=1e-5)

    cross = run_teacher(teacher, pairs, batch_size=4)
    reference = one_by_one(teacher, [a for a, _ in pairs], [b for _, b in pairs])
    np.testing.assert_allclose(cross, reference, atol=1e-5)
    assert not np.allclose(cross, first, atol=1e-3)  # really packed as pairs
    with pytest.raises(ValueError, match="pair_encoding"):
        run_teacher(teacher, pairs, pair_encoding="both")


def test_bad_inputs(teacher):
    with pytest.raises(ValueError, match="No inputs"):
        run_teacher(teacher, [])
    with pytest.raises(ValueError, match="Input 1 is not a string"):
        run_teacher(teacher, ["a", 3])


def test_cache_reuse_rebuild_and_damage(teacher, expected, tmp_path, monkeypatch):
    path = tmp_path / "cache" / "teacher.npz"
    calls = []
    real_run = teacher_pass.run_teacher

    def counting_run(*args, **kwargs):
        calls.append(1)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(teacher_pass, "run_teacher", counting_run)
    first = cache_teacher_outputs(teacher, SENTENCES, path, batch_size=8, progress=False)
    assert len(calls) == 1 and path.is_file()
    np.testing.assert_allclose(first, expected, atol=1e-5)
    assert [p.name for p in path.parent.iterdir()] == ["teacher.npz"]  # no temp files left

    again = cache_teacher_outputs(teacher, SENTENCES, path, batch_size=8, progress=False)
    assert len(calls) == 1
    np.testing.assert_array_equal(again, first)

    # Other inputs, other settings, other weights: a different key, rebuilt.
    cache_teacher_outputs(teacher, SENTENCES[:-1], path, batch_size=8, progress=False)
    assert len(calls) == 2
    cache_teacher_outputs(teacher, SENTENCES[:-1], path, batch_size=4, progress=False)
    assert len(calls) == 3
    original = teacher.get_weights()
    changed = [w.copy() for w in original]
    changed[0][5, 0] += 0.5
    teacher.set_weights(changed)
    try:
        rebuilt = cache_teacher_outputs(teacher, SENTENCES, path, batch_size=8, progress=False)
    finally:
        teacher.set_weights(original)
    assert len(calls) == 4
    assert not np.allclose(rebuilt, first)

    # Pairs round-trip through the cache as a tuple.
    pairs = [(SENTENCES[i], SENTENCES[i + 1]) for i in range(5)]
    pair_path = tmp_path / "pairs.npz"
    a, b = cache_teacher_outputs(
        teacher, pairs, pair_path, pair_encoding="separate", progress=False
    )
    a2, b2 = cache_teacher_outputs(
        teacher, pairs, pair_path, pair_encoding="separate", progress=False
    )
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)

    # A truncated file is reported, naming the file.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="teacher.npz is truncated or corrupted"):
        cache_teacher_outputs(teacher, SENTENCES, path, batch_size=8, progress=False)
    # ... and rebuild=True replaces it.
    cache_teacher_outputs(teacher, SENTENCES, path, batch_size=8, progress=False, rebuild=True)

    # Contents changed behind the checksum's back: reported too.
    with np.load(path) as cached:
        arrays = {k: cached[k] for k in cached.files}
    arrays["array"] = arrays["array"] + 1.0
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CacheError, match="checksum"):
        cache_teacher_outputs(teacher, SENTENCES, path, batch_size=8, progress=False)


def test_bfloat16_pass_is_close_and_leaves_float32_exact(teacher, expected):
    option = "auto_mixed_precision_onednn_bfloat16"
    half = run_teacher(teacher, SENTENCES, batch_size=8, precision="bfloat16")
    # bfloat16 keeps 8 bits of mantissa: unit-norm embeddings agree to ~1e-2.
    np.testing.assert_allclose(half, expected, atol=5e-2)
    assert not tf.config.optimizer.get_experimental_options().get(option, False)  # restored
    # The float32 pass after it is exact again (its own traced function).
    np.testing.assert_allclose(run_teacher(teacher, SENTENCES, batch_size=8), expected, atol=1e-5)
    with pytest.raises(ValueError, match="precision"):
        run_teacher(teacher, SENTENCES, precision="float16")
