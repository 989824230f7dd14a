"""The causal-LM recipe (`kd_keras.recipes.causal_lm`) and `kd_keras.models.causal_lm`.

Masked token-level losses, the byte-level BPE, instruction data and GPT-2 /
Qwen checkpoints, and the recipe end to end.
"""

import dataclasses
import json
import math

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kd_keras import losses as L
from kd_keras import serving
from kd_keras.cli import main as cli_main
from kd_keras.data import data_path
from kd_keras.models import causal_lm
from kd_keras.recipes.causal_lm import Config, job


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _lm_batch(seed=0, batch=3, length=6, teacher_vocab=11, student_vocab=8):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(batch, length, teacher_vocab)).astype("float32") * 2
    student = rng.normal(size=(batch, length, student_vocab)).astype("float32") * 2
    labels = rng.integers(0, student_vocab, size=(batch, length)).astype("int32")
    labels[:, :2] = -100  # the prompt
    labels[1, 4:] = -100  # padding
    return teacher, student, labels


LOSSES = {
    "forward_kl": lambda: L.ForwardKL(temperature=2.0, truncate_teacher_vocab=True),
    "reverse_kl": lambda: L.ReverseKL(temperature=2.0, truncate_teacher_vocab=True),
    "skewed_forward_kl": lambda: L.SkewedForwardKL(skew=0.1, truncate_teacher_vocab=True),
    "skewed_reverse_kl": lambda: L.SkewedReverseKL(skew=0.1, truncate_teacher_vocab=True),
    "logit_mse": lambda: L.LogitMSE(truncate_teacher_vocab=True),
    "soft_target_mse": lambda: L.SoftTargetMSE(truncate_teacher_vocab=True),
}


# === Masks and the ignore index ===


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_positions_get_exactly_zero_gradient(name):
    teacher, student, labels = _lm_batch()
    student = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = LOSSES[name]()(teacher, student, labels=labels)
    grad = tape.gradient(loss, student).numpy()
    ignored = labels == -100
    assert np.all(grad[ignored] == 0.0)
    # Kept positions do learn (so that the check above can fail).
    assert np.all(np.abs(grad[~ignored]).sum(axis=-1) > 0.0)


def test_masked_positions_get_zero_gradient_through_the_distiller():
    from kd_keras import Distiller

    teacher_logits, _, labels = _lm_batch(seed=3)
    ids = np.random.default_rng(3).integers(0, 8, size=labels.shape).astype("int32")
    keras.utils.set_random_seed(0)
    student = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(8, 8)])
    distiller = Distiller(lambda x, training=False: None, student)
    distiller.compile(
        optimizer="sgd",
        student_loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=-100
        ),
        distillation_loss=L.ForwardKL(truncate_teacher_vocab=True),
        alpha=0.5,
        label_mask=True,
    )
    x = {"student": ids, "teacher_outputs": tf.constant(teacher_logits)}
    teacher_out = distiller.teacher_outputs(x)
    student_out = tf.Variable(student(ids))
    with tf.GradientTape(persistent=True) as tape:
        total, hard, soft = distiller._compute_losses(labels, teacher_out, student_out, None)
    ignored = labels == -100
    for value in (total, hard, soft):
        grad = tape.gradient(value, student_out).numpy()
        assert np.all(grad[ignored] == 0.0)
        assert np.all(np.abs(grad[~ignored]).sum(axis=-1) > 0.0)


def test_ignore_index_matches_numpy_over_kept_positions():
    teacher, student, labels = _lm_batch(seed=1)
    keep = labels != -100
    t = teacher[..., : student.shape[-1]]  # truncate_teacher_vocab
    temperature = 2.0
    log_p = _log_softmax(t / temperature)
    log_q = _log_softmax(student / temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    forward = (p * (log_p - log_q)).sum(-1)
    reverse = (q * (log_q - log_p)).sum(-1)
    skew = 0.1
    forward_skewed = (
        np.exp(_log_softmax(t))
        * (
            _log_softmax(t)
            - np.log(skew * np.exp(_log_softmax(t)) + (1 - skew) * np.exp(_log_softmax(student)))
        )
    ).sum(-1)
    expected = {
        "forward_kl": temperature**2 * forward[keep].mean(),
        "reverse_kl": temperature**2 * reverse[keep].mean(),
        "skewed_forward_kl": forward_skewed[keep].mean(),
        "logit_mse": ((t - student) ** 2).mean(-1)[keep].mean(),
    }
    for name, value in expected.items():
        got = float(LOSSES[name]()(teacher, student, labels=labels))
        assert got == pytest.approx(value, rel=1e-5), name
    # The cross-entropy of every recipe: -log q(label) over kept positions only.
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)
    log_q1 = _log_softmax(student)
    nll = -np.take_along_axis(log_q1, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    assert float(ce(labels, student)) == pytest.approx(nll[keep].mean(), rel=1e-5)
    # Without the option, a larger teacher vocabulary is an error.
    with pytest.raises(ValueError, match="truncate_teacher_vocab"):
        L.ForwardKL()(teacher, student, labels=labels)


def test_masked_perplexity_matches_numpy():
    teacher, _, labels = _lm_batch(seed=2)
    logits = tf.constant(teacher)
    result = causal_lm.masked_perplexity(lambda x, training=False: logits, {"x": teacher}, labels)
    keep = labels != -100
    log_p = _log_softmax(teacher)
    nll = -np.take_along_axis(log_p, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    assert result["tokens"] == keep.sum()
    assert result["perplexity"] == pytest.approx(math.exp(nll[keep].mean()), rel=1e-5)


# === Tokenizer, data and checkpoints ===


TEXTS = [
    "the cat sat on the mat.",
    "the dog sat on the log!",
    "a cat and a dog, on the mat",
    "Ünïcode café 42 times",
] * 5


@pytest.fixture(scope="module")
def bpe():
    vocabulary, merges = causal_lm.train_byte_bpe(TEXTS, 300)
    return vocabulary, merges, causal_lm.build_gpt2_tokenizer(vocabulary, merges)


def test_byte_bpe_round_trips_and_merges_frequent_words(bpe):
    vocabulary, merges, tokenizer = bpe
    assert sorted(vocabulary.values()) == list(range(len(vocabulary)))
    assert vocabulary[causal_lm.END_OF_TEXT] == len(vocabulary) - 1
    assert causal_lm.train_byte_bpe(TEXTS, 300) == (vocabulary, merges)  # deterministic
    for text in TEXTS[:4] + ["unseen wörds\tand  spaces\n"]:
        ids = tokenizer(text)
        assert tokenizer.detokenize(ids) == text
    # " the" occurs 15 times: one token; a word never seen is split into bytes.
    assert np.asarray(tokenizer(" the")).tolist() == [vocabulary["Ġthe"]]
    assert len(np.asarray(tokenizer("zq"))) == 2


def test_encode_instructions_ignores_prompt_and_padding(bpe):
    _, _, tokenizer = bpe
    examples = [
        {"instruction": "Rate it.", "input": "the cat", "output": "positive"},
        {"instruction": "Say hi.", "input": "", "output": "the dog sat"},
    ]
    inputs, labels, skipped = causal_lm.encode_instructions(examples, tokenizer, 48)
    assert skipped == 0
    eos = tokenizer.token_to_id(causal_lm.END_OF_TEXT)
    for i, example in enumerate(examples):
        prompt = list(np.asarray(tokenizer(causal_lm.format_prompt(example))))
        answer = list(np.asarray(tokenizer(example["output"])))
        ids = [eos] + prompt + answer + [eos]
        n = len(ids) - 1
        assert inputs["token_ids"][i, :n].tolist() == ids[:-1]
        assert inputs["padding_mask"][i].tolist() == [1] * n + [0] * (48 - n)
        expected = [-100] * len(prompt) + answer + [eos] + [-100] * (48 - n)
        assert labels[i].tolist() == expected
    _, _, skipped = causal_lm.encode_instructions(examples, tokenizer, 8)
    assert skipped == 2


@pytest.mark.parametrize("fmt", ["keras", "transformers"])
def test_gpt2_checkpoint_dir_loads_offline_with_identical_logits(bpe, tmp_path, fmt):
    vocabulary, merges, _ = bpe
    tokenizer = causal_lm.build_gpt2_tokenizer(vocabulary, merges)
    model = causal_lm.build_gpt2_causal_lm(
        len(vocabulary), num_layers=1, hidden_dim=16, num_heads=2, max_sequence_length=16, seed=4
    )
    path = serving.save_causal_lm(model, tmp_path / "lm", format=fmt, tokenizer=tokenizer)
    expected = {"keras": "model.weights.h5", "transformers": "model.safetensors"}[fmt]
    assert (path / expected).is_file()
    loaded = causal_lm.load_causal_lm(path)
    assert isinstance(loaded, keras_hub.models.GPT2CausalLM)
    ids = np.array([[3, 1, 4, 1, 5, 9]], "int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_array_equal(loaded(x), model(x))
    assert loaded.preprocessor.tokenizer.vocabulary == vocabulary


def test_qwen_hf_checkpoint_dir_loads_offline_with_identical_logits(bpe, tmp_path):
    vocabulary, merges, _ = bpe
    vocabulary = causal_lm.extend_vocabulary(vocabulary, ["<|im_start|>", "<|im_end|>"])
    tokenizer = keras_hub.models.QwenTokenizer(vocabulary=vocabulary, merges=merges)
    keras.utils.set_random_seed(5)
    backbone = keras_hub.models.QwenBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )
    model = keras_hub.models.QwenCausalLM(backbone)
    path = serving.save_causal_lm(model, tmp_path / "qwen", "transformers", tokenizer=tokenizer)
    loaded = causal_lm.load_causal_lm(path)
    assert isinstance(loaded, keras_hub.models.QwenCausalLM)
    ids = np.array([[3, 1, 4, 1, 5]], "int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_array_equal(loaded(x), model(x))


def test_extend_vocabulary_appends_after_the_student_vocabulary(bpe):
    vocabulary, _, _ = bpe
    extended = causal_lm.extend_vocabulary(vocabulary, ["<|a|>", "<|b|>"])
    assert [extended["<|a|>"], extended["<|b|>"]] == [len(vocabulary), len(vocabulary) + 1]
    assert all(extended[k] == v for k, v in vocabulary.items())
    with pytest.raises(ValueError, match="already"):
        causal_lm.extend_vocabulary(vocabulary, [causal_lm.END_OF_TEXT])


# === The recipe, end to end ===


@pytest.mark.slow
def test_distill_lm_recipe_end_to_end(tmp_path, finite_numbers, monkeypatch):
    run_dir = tmp_path / "lm"
    argv = [
        "--run-dir", str(run_dir), "--train-limit", "48", "--test-limit", "24",
        "--corpus-limit", "100", "--vocabulary-size", "320", "--sequence-length", "96",
        "--teacher-layers", "1", "--teacher-dim", "16", "--teacher-heads", "2",
        "--student-layers", "1", "--student-dim", "8", "--student-heads", "1",
        "--teacher-epochs", "1", "--student-epochs", "1", "--batch-size", "16",
        "--extra-teacher-tokens", "3", "--objectives", "student_only,forward_kl_ce",
    ]  # fmt: skip
    config = Config(
        run_dir=str(run_dir), train_limit=48, test_limit=24, corpus_limit=100,
        vocabulary_size=320, sequence_length=96, teacher_layers=1, teacher_dim=16,
        teacher_heads=2, student_layers=1, student_dim=8, student_heads=1, teacher_epochs=1,
        student_epochs=1, batch_size=16, extra_teacher_tokens=3,
        objectives="student_only,forward_kl_ce",
    )  # fmt: skip
    metrics = job.run(config)
    for name in ("metrics.json", "report.md", "tokenizer/vocab.json", "teacher/config.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert all(math.isfinite(x) for x in finite_numbers(metrics))
    assert set(metrics["students"]) == {"student_only", "forward_kl_ce"}
    assert metrics["teacher"]["vocabulary_size"] == metrics["vocabulary_size"] + 3
    # Re-evaluate the saved teacher, loaded offline, on the same held-out data.
    teacher = causal_lm.load_causal_lm(run_dir / "teacher")
    vocabulary, merges = causal_lm.load_gpt2_tokenizer(run_dir / "tokenizer")
    tokenizer = causal_lm.build_gpt2_tokenizer(vocabulary, merges)
    examples = causal_lm.read_instructions(data_path("instructions", "test.jsonl"), limit=24)
    x, y, _ = causal_lm.encode_instructions(examples, tokenizer, 96)
    again = causal_lm.masked_perplexity(teacher, x, y)
    assert again["tokens"] == metrics["teacher"]["tokens"]
    assert again["perplexity"] == pytest.approx(metrics["teacher"]["perplexity"], rel=1e-4)
    # A rerun with the same settings reuses the saved teacher (the command line's
    # flags are the config's fields).
    assert job.run(dataclasses.replace(config, objectives="forward_kl"))["teacher"]["reused"]
    assert cli_main(["distill-lm", *argv, "--objectives", "forward_kl"]) == 0
    rerun = json.loads((run_dir / "metrics.json").read_text())
    assert rerun["teacher"]["reused"] and list(rerun["students"]) == ["forward_kl"]
    assert rerun["settings"] == {**metrics["settings"], "objectives": ["forward_kl"]}
    # Killed before the report, the same run again trains no student: each
    # objective's figures are a finished phase.
    (run_dir / "metrics.json").unlink()
    monkeypatch.setattr(job, "_train_student", None)  # called, it would fail
    assert job.run(config)["students"] == json.loads(json.dumps(metrics["students"]))
