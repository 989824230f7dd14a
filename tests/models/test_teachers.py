"""Teachers: offline loading (HF, Google, KerasHub, Keras), exactness, round trips."""

import json
import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.models.bert_encoder import BertEncoder, get_google_weights
from kd_keras.models.bert_tokenizer import BertPreprocessor
from kd_keras.models.teachers import (
    Teacher,
    default_model_dir,
    load_teacher,
)
from kd_keras.serving import save_google_checkpoint, save_teacher_as_google_checkpoint
from kd_keras.teacher_pass import run_teacher

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
REFERENCE = json.loads((FIXTURES / "minilm_reference.json").read_text(encoding="utf-8"))
REFERENCE_VECTORS = np.load(FIXTURES / "minilm_reference_vectors.npz")["embeddings"]
CHINESE = json.loads((FIXTURES / "chinese_reference.json").read_text(encoding="utf-8"))
TOLERANCE = 1e-5

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "run",
    "##s",
    "##ing",
    ".",
    ",",
    "!",
    "?",
    "big",
    "small",
    "red",
    "blue",
    "is",
    "was",
    "plane",
    "man",
    "woman",
    "play",
    "##ed",
    "cafe",
    "一",
    "架",
    "飞",
    "机",
]


# === Independent NumPy reference of a BERT encoder on Google-named weights ===


def _layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


_erf = np.vectorize(math.erf)


def numpy_bert(weights, config, token_ids, segment_ids, mask):
    """BERT forward pass (float64), Google variable names, exact GELU."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    heads = config["num_attention_heads"]
    seq = token_ids.shape[1]
    x = (
        w["bert/embeddings/word_embeddings"][token_ids]
        + w["bert/embeddings/position_embeddings"][:seq][None]
        + w["bert/embeddings/token_type_embeddings"][segment_ids]
    )
    x = _layer_norm(x, w["bert/embeddings/LayerNorm/gamma"], w["bert/embeddings/LayerNorm/beta"])
    batch, _, hidden = x.shape
    size = hidden // heads
    for i in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}/"

        def dense(h, name, p=p):
            return h @ w[p + name + "/kernel"] + w[p + name + "/bias"]

        def split(h):
            return h.reshape(batch, seq, heads, size).transpose(0, 2, 1, 3)

        q, k, v = (split(dense(x, f"attention/self/{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
        scores = np.where(mask[:, None, None, :] > 0, scores, -1e9)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        x = _layer_norm(
            x + dense(context, "attention/output/dense"),
            w[p + "attention/output/LayerNorm/gamma"],
            w[p + "attention/output/LayerNorm/beta"],
        )
        h = dense(x, "intermediate/dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = _layer_norm(
            x + dense(h, "output/dense"),
            w[p + "output/LayerNorm/gamma"],
            w[p + "output/LayerNorm/beta"],
        )
    pooled = np.tanh(x[:, 0] @ w["bert/pooler/dense/kernel"] + w["bert/pooler/dense/bias"])
    return x, pooled


def numpy_mean_pool(sequence, mask, normalize):
    m = mask[..., None].astype(np.float64)
    pooled = (sequence * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


TINY_CONFIG = {
    "vocab_size": len(TINY_VOCAB),
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": 32,
    "type_vocab_size": 2,
}


def random_google_weights(config, seed=0):
    """Random weights under Google names, shapes from `config` alone."""
    rng = np.random.default_rng(seed)
    h, inner = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "bert/embeddings/word_embeddings": (config["vocab_size"], h),
        "bert/embeddings/position_embeddings": (config["max_position_embeddings"], h),
        "bert/embeddings/token_type_embeddings": (config["type_vocab_size"], h),
        "bert/embeddings/LayerNorm/gamma": (h,),
        "bert/embeddings/LayerNorm/beta": (h,),
        "bert/pooler/dense/kernel": (h, h),
        "bert/pooler/dense/bias": (h,),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}/"
        for n in ("query", "key", "value"):
            shapes[p + f"attention/self/{n}/kernel"] = (h, h)
            shapes[p + f"attention/self/{n}/bias"] = (h,)
        shapes.update(
            {
                p + "attention/output/dense/kernel": (h, h),
                p + "attention/output/dense/bias": (h,),
                p + "attention/output/LayerNorm/gamma": (h,),
                p + "attention/output/LayerNorm/beta": (h,),
                p + "intermediate/dense/kernel": (h, inner),
                p + "intermediate/dense/bias": (inner,),
                p + "output/dense/kernel": (inner, h),
                p + "output/dense/bias": (h,),
                p + "output/LayerNorm/gamma": (h,),
                p + "output/LayerNorm/beta": (h,),
            }
        )
    weights = {}
    for name, shape in shapes.items():
        value = rng.normal(0.0, 0.5, shape)
        if name.endswith("gamma"):
            value = 1.0 + 0.1 * value
        weights[name] = value.astype("float32")
    return weights


def write_tf1_checkpoint(weights, prefix):
    """A checkpoint written by a TF1 `Saver` in graph mode, as Google BERT wrote them."""
    with tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(v, name=n) for n, v in weights.items()]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(prefix))


def tiny_google_dir(tmp_path, config=TINY_CONFIG, vocab=TINY_VOCAB, seed=0):
    directory = tmp_path / "google"
    directory.mkdir()
    weights = random_google_weights(config, seed)
    write_tf1_checkpoint(weights, directory / "bert_model.ckpt")
    (directory / "bert_config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return directory, weights


def packed(preprocessor, texts):
    out = preprocessor.pack(preprocessor.tokenize(texts))
    return {k: v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def minilm():
    return load_teacher("default")


# === all-MiniLM-L6-v2 exactness ===


def test_default_teacher_settings(minilm):
    assert minilm.pooling == "mean"
    assert minilm.normalize is True
    assert minilm.sequence_length == 256
    assert minilm.encoder.hidden_activation == "gelu"
    assert default_model_dir().joinpath("model.safetensors").is_file()


def test_token_ids_match_hf_tokenizer(minilm):
    preprocessor = minilm.preprocessor
    inputs = packed(preprocessor, REFERENCE["sentences"])
    for i, (sentence, expected) in enumerate(
        zip(REFERENCE["sentences"], REFERENCE["token_ids"], strict=True)
    ):
        n = int(inputs["padding_mask"][i].sum())
        assert inputs["token_ids"][i, :n].tolist() == expected, sentence
        assert not inputs["token_ids"][i, n:].any()
    # The long text really is truncated at 256 = max_seq_length.
    assert max(len(t) for t in REFERENCE["token_ids"]) == 256
    # ASCII rows take a shorter normalization path: alone in a batch, and
    # interleaved with non-ASCII rows, they give the same ids.
    ascii_rows = [i for i, s in enumerate(REFERENCE["sentences"]) if s.isascii()]
    other_rows = [i for i, s in enumerate(REFERENCE["sentences"]) if not s.isascii()]
    assert len(ascii_rows) >= 5 and len(other_rows) >= 5
    for rows in (ascii_rows, other_rows, other_rows[::-1] + ascii_rows[::2]):
        inputs = packed(preprocessor, [REFERENCE["sentences"][i] for i in rows])
        for k, i in enumerate(rows):
            n = int(inputs["padding_mask"][k].sum())
            assert inputs["token_ids"][k, :n].tolist() == REFERENCE["token_ids"][i]


ASCII_CASES = [
    "",
    "   ",
    "don't stop: U.S.A. costs $100.50 (or 3.14%)!",
    "".join(chr(c) for c in range(33, 127)),  # every ASCII punctuation mark, letter, digit
    "a_b e-mail <tag> ~x^y`z {x}|w @me #1 &amp; \\slash 'quote' \"dq\"",
    "tab\there new\nline cr\rhere vt\x0bff\x0cfs\x1cdel\x7fnul\x00end",
    "MiXeD CaSe WORDS and UPPER",
    "a" * 99 + " " + "b" * 100 + " " + "c" * 101 + " ok",
    "unaffable antidisestablishmentarianism xyzzyq",
    "hello [MASK] world [SEP] [cls]",  # special tokens: the step-by-step path
    "nul\x00inside [ and a NUL",
    "open [ bracket",
]


def test_ascii_fast_path_equals_the_step_by_step_tokenizer(minilm_vocabulary):
    # ASCII text without "[" goes through one FastWordpiece op that splits
    # words itself; it must give exactly the ids of the step-by-step path
    # (which the HF reference checks), here and on every STS-B sentence.
    from kd_keras.data import data_path, read_pairs

    preprocessor = BertPreprocessor(minilm_vocabulary, sequence_length=512)
    a, b, _ = read_pairs(data_path("stsb", "sts-test.csv"))
    texts = ASCII_CASES + list(a) + list(b)
    fast = preprocessor.tokenize(texts).to_list()
    slow = preprocessor._tokenize_any(tf.constant(texts)).to_list()
    for text, got, expected in zip(texts, fast, slow, strict=True):
        assert got == expected, text
    assert sum(text.isascii() and "[" not in text for text in texts) > 2000
    unk = preprocessor.unk_token_id
    # 99 and 100 characters are still words (WordPiece pieces), 101 are [UNK].
    assert fast[7][-2:] == [unk, preprocessor.tokenize("ok").to_list()[0][0]]
    assert unk not in fast[7][:-2]


def test_pair_token_ids_match_hf_longest_first(minilm):
    preprocessor = minilm.preprocessor
    first = preprocessor.tokenize([a for a, _ in REFERENCE["pairs"]])
    second = preprocessor.tokenize([b for _, b in REFERENCE["pairs"]])
    out = preprocessor.pack(first, second, sequence_length=REFERENCE["pair_max_length"])
    for i, (ids, segments) in enumerate(
        zip(REFERENCE["pair_token_ids"], REFERENCE["pair_segment_ids"], strict=True)
    ):
        n = int(out["padding_mask"][i].numpy().sum())
        assert out["token_ids"][i, :n].numpy().tolist() == ids
        assert out["segment_ids"][i, :n].numpy().tolist() == segments


def test_embeddings_match_sentence_transformers(minilm):
    embeddings = run_teacher(minilm, REFERENCE["sentences"], batch_size=8)
    assert embeddings.dtype == np.float32
    assert embeddings.shape == REFERENCE_VECTORS.shape
    assert np.abs(embeddings - REFERENCE_VECTORS).max() < TOLERANCE


def test_approximate_gelu_would_fail_the_tolerance(minilm):
    # The fixture is sensitive enough to catch KerasHub's tanh GELU.
    config = minilm.encoder.get_config()
    config["hidden_activation"] = "gelu_approximate"
    approximate = BertEncoder.from_config(config)
    approximate.set_weights(minilm.encoder.get_weights())
    teacher = Teacher(approximate, minilm.preprocessor, pooling="mean", normalize=True)
    embeddings = run_teacher(teacher, REFERENCE["sentences"][:6])
    assert np.abs(embeddings - REFERENCE_VECTORS[:6]).max() > TOLERANCE


def test_exact_gelu_survives_keras_reload(minilm, tmp_path):
    path = tmp_path / "teacher.keras"
    minilm.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, Teacher)
    assert isinstance(reloaded.encoder, BertEncoder)
    assert reloaded.encoder.hidden_activation == "gelu"
    assert reloaded.preprocessor.sequence_length == 256
    embeddings = run_teacher(reloaded, REFERENCE["sentences"])
    assert np.abs(embeddings - REFERENCE_VECTORS).max() < TOLERANCE


def test_minilm_google_checkpoint_round_trip(minilm, tmp_path):
    directory = save_teacher_as_google_checkpoint(minilm, tmp_path / "minilm_google")
    names = dict(tf.train.list_variables(str(directory / "bert_model.ckpt")))
    assert names["bert/encoder/layer_5/attention/self/query/kernel"] == [384, 384]
    assert names["bert/embeddings/word_embeddings"] == [30522, 384]
    reloaded = load_teacher(str(directory))
    assert (reloaded.pooling, reloaded.normalize, reloaded.sequence_length) == ("mean", True, 256)
    sentences = REFERENCE["sentences"]
    np.testing.assert_array_equal(run_teacher(reloaded, sentences), run_teacher(minilm, sentences))


# === Google / bert4keras checkpoints ===


def test_tf1_saver_checkpoint_matches_numpy_reference(tmp_path):
    directory, weights = tiny_google_dir(tmp_path)
    teacher = load_teacher(str(directory), sequence_length=16)
    texts = ["the cat sat on the mat.", "a big red dog runs!", "一架飞机", "cafe"]
    inputs = packed(teacher.preprocessor, texts)
    outputs = teacher.encoder(inputs)
    sequence, pooled = numpy_bert(
        weights, TINY_CONFIG, inputs["token_ids"], inputs["segment_ids"], inputs["padding_mask"]
    )
    mask = inputs["padding_mask"][..., None] > 0
    np.testing.assert_allclose(
        np.where(mask, outputs["sequence_output"], 0), np.where(mask, sequence, 0), atol=1e-4
    )
    np.testing.assert_allclose(outputs["pooled_output"], pooled, atol=1e-4)
    expected = numpy_mean_pool(sequence, inputs["padding_mask"], normalize=False)
    np.testing.assert_allclose(run_teacher(teacher, texts), expected, atol=1e-4)


def test_google_writer_round_trip_is_identical(tmp_path):
    directory, weights = tiny_google_dir(tmp_path)
    teacher = load_teacher(str(directory))
    out_dir = save_google_checkpoint(teacher.encoder, tmp_path / "written", vocabulary=TINY_VOCAB)
    # The writer uses plain Google/TF1 variable names and shapes.
    written = dict(tf.train.list_variables(str(out_dir / "bert_model.ckpt")))
    assert written == {name: list(value.shape) for name, value in weights.items()}
    reader = tf.train.load_checkpoint(str(out_dir / "bert_model.ckpt"))
    for name, value in weights.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)
    config = json.loads((out_dir / "bert_config.json").read_text())
    assert {k: config[k] for k in TINY_CONFIG} == TINY_CONFIG
    reloaded = load_teacher(str(out_dir))
    texts = ["the small blue plane was big", "a man, a woman!"]
    np.testing.assert_array_equal(run_teacher(reloaded, texts), run_teacher(teacher, texts))
    np.testing.assert_array_equal(
        get_google_weights(reloaded.encoder)["bert/pooler/dense/kernel"],
        weights["bert/pooler/dense/kernel"],
    )


def test_chinese_text_tokenizes_per_character(tmp_path):
    lines = (FIXTURES / "cnsd_sts_zh_sample.txt").read_text(encoding="utf-8").splitlines()
    sentences = [s for line in lines for s in line.split("||")[1:3]]
    assert sentences == CHINESE["sentences"]
    vocab = CHINESE["vocabulary"]
    preprocessor = BertPreprocessor(vocab, sequence_length=512)
    inputs = packed(preprocessor, sentences)
    for i, expected in enumerate(CHINESE["token_ids"]):
        n = int(inputs["padding_mask"][i].sum())
        assert inputs["token_ids"][i, :n].tolist() == expected, sentences[i]
    # Independently: a run of CJK characters is one token per character.
    first = sentences[0].rstrip("。")
    ids = preprocessor.tokenize([first]).to_list()[0]
    assert ids == [vocab.index(c) for c in first]

    # And a Chinese Google checkpoint loads with that tokenizer.
    config = dict(TINY_CONFIG, vocab_size=len(vocab), max_position_embeddings=128)
    directory, _ = tiny_google_dir(tmp_path, config=config, vocab=vocab, seed=3)
    teacher = load_teacher(str(directory))
    assert teacher.preprocessor.tokenize([first]).to_list()[0] == ids
    assert run_teacher(teacher, sentences).shape == (len(sentences), 16)


# === Hugging Face folders ===


def write_tiny_hf_dir(tmp_path, tensors, sentence_transformers=True):
    """A Hugging Face folder of TINY_CONFIG with the HF-named `tensors` (`hf_tensors`)."""
    from safetensors.numpy import save_file

    directory = tmp_path / "hf"
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"))
    config = dict(TINY_CONFIG, model_type="bert", layer_norm_eps=1e-12)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    if sentence_transformers:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        (directory / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
        (directory / "1_Pooling").mkdir()
        pooling = {"word_embedding_dimension": 16, "pooling_mode_cls_token": True}
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12}))
    return directory


def test_hf_folder_matches_numpy_reference(tmp_path, hf_tensors):
    weights = random_google_weights(TINY_CONFIG, seed=1)
    directory = write_tiny_hf_dir(tmp_path, hf_tensors(weights))
    teacher = load_teacher(str(directory))
    # sentence-transformers layout: CLS pooling, no Normalize, 12 tokens.
    assert (teacher.pooling, teacher.normalize, teacher.sequence_length) == ("cls", False, 12)
    texts = ["the cat sat on the mat . the dog ran on the mat .", "big plane"]
    inputs = packed(teacher.preprocessor, texts)
    assert inputs["token_ids"].shape[1] == 12
    sequence, _ = numpy_bert(
        weights, TINY_CONFIG, inputs["token_ids"], inputs["segment_ids"], inputs["padding_mask"]
    )
    np.testing.assert_allclose(run_teacher(teacher, texts), sequence[:, 0], atol=1e-4)


def test_hf_folder_without_sentence_transformers_defaults(tmp_path, hf_tensors):
    weights = random_google_weights(TINY_CONFIG)
    directory = write_tiny_hf_dir(tmp_path, hf_tensors(weights), False)
    teacher = load_teacher(str(directory), normalize=True)
    assert (teacher.pooling, teacher.normalize, teacher.sequence_length) == ("mean", True, 32)
    norms = np.linalg.norm(run_teacher(teacher, ["a cat", "the dog"]), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


# === KerasHub presets and Keras models ===


def test_keras_hub_preset_folder(tmp_path):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(TINY_VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=TINY_VOCAB, lowercase=True)
    preset = tmp_path / "preset"
    backbone.save_to_preset(str(preset))
    tokenizer.save_to_preset(str(preset))
    teacher = load_teacher(str(preset))
    assert teacher.preprocessor.vocabulary == TINY_VOCAB
    texts = ["The Cat sat.", "a dog"]
    inputs = packed(teacher.preprocessor, texts)
    sequence = keras.ops.convert_to_numpy(backbone(inputs)["sequence_output"])
    expected = numpy_mean_pool(sequence, inputs["padding_mask"], normalize=False)
    np.testing.assert_allclose(run_teacher(teacher, texts), expected, atol=1e-5)


def test_keras_model_spec_and_keras_file(tmp_path):
    directory, weights = tiny_google_dir(tmp_path)
    source = load_teacher(str(directory))
    preprocessor = BertPreprocessor(TINY_VOCAB, sequence_length=16)
    teacher = load_teacher(source.encoder, preprocessor=preprocessor, normalize=True)
    texts = ["the red cat", "a blue dog was big ."]
    inputs = packed(preprocessor, texts)
    sequence, _ = numpy_bert(
        weights, TINY_CONFIG, inputs["token_ids"], inputs["segment_ids"], inputs["padding_mask"]
    )
    expected = numpy_mean_pool(sequence, inputs["padding_mask"], normalize=True)
    np.testing.assert_allclose(run_teacher(teacher, texts), expected, atol=1e-4)
    path = tmp_path / "tiny.keras"
    teacher.save(path)
    np.testing.assert_array_equal(
        run_teacher(load_teacher(str(path)), texts), run_teacher(teacher, texts)
    )


def test_string_input_graph_for_export(tmp_path):
    directory, _ = tiny_google_dir(tmp_path)
    teacher = load_teacher(str(directory), sequence_length=16)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(texts):
        return teacher(teacher.preprocessor(texts))

    texts = ["the cat sat on the mat .", "一架飞机 !", "a"]
    np.testing.assert_allclose(
        serve(tf.constant(texts)).numpy(), run_teacher(teacher, texts), atol=1e-6
    )


# === Bad input ===


def test_missing_and_malformed_sources_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_teacher(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_teacher(str(tmp_path / "missing.keras"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a recognised model folder"):
        load_teacher(str(tmp_path / "empty"))

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"vocab_size": 10,\n "hidden_size": }', encoding="utf-8")
    with pytest.raises(ValueError, match=r"config\.json, line 2: malformed JSON"):
        load_teacher(str(bad))

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        load_teacher(str(other))

    directory, _ = tiny_google_dir(tmp_path)
    (directory / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_teacher(str(directory))
    (directory / "bert_config.json").write_text(json.dumps({"vocab_size": 5}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bert_config\.json: missing BERT config keys"):
        load_teacher(str(directory))


def test_vocabulary_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\n[UNK]\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"vocab\.txt, line 3: not valid UTF-8"):
        BertPreprocessor(str(path))
