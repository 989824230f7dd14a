"""The causal-LM recipe, step by step: `run(config)`.

Token-level distillation of a causal LM, compared across objectives. With no
pretrained LM offline, the recipe first trains its own teacher:

1. a byte-level BPE tokenizer is learned from the corpus and the instruction
   training set (`kd_keras.models.causal_lm.train_byte_bpe`);
2. the teacher, a KerasHub `GPT2CausalLM` (default 4 layers x 128), is trained
   on the corpus (`lm/corpus.txt` of the data folder, every token a target)
   and the instruction training set (`instructions/train.jsonl`, answer
   tokens only). Its vocabulary is the student's plus a few appended tokens,
   so the losses run with `truncate_teacher_vocab=True`. It is saved as a
   local KerasHub preset (`run_dir/teacher/`) and loaded back offline from
   there; a rerun with the same settings reuses it;
3. one student (`GPT2CausalLM`, default 2 layers x 64, same tokenizer, same
   initial weights, same batches) per objective is trained for the same
   number of steps on the instruction training set, with the labels of
   prompt tokens and padding set to -100 (`Distiller.compile(label_mask=True)`
   and `SparseCategoricalCrossentropy(ignore_class=-100)`):

   | objective | loss |
   |---|---|
   | `student_only` | cross-entropy on the answers (no teacher) |
   | `forward_kl` | `ForwardKL` (alpha = 1) |
   | `reverse_kl` | `ReverseKL` (alpha = 1) |
   | `skewed_forward_kl` | `SkewedForwardKL(skew)` (alpha = 1) |
   | `skewed_reverse_kl` | `SkewedReverseKL(skew)` (alpha = 1) |
   | `forward_kl_ce` | `alpha * ForwardKL + (1 - alpha) * cross-entropy` |

4. every model is scored by its perplexity on the answer tokens of the
   held-out instruction set (`instructions/test.jsonl`).

The run directory gets `metrics.json`, `report.md` (the comparison table,
`kd_keras.recipes.causal_lm.report`), `tokenizer/` (`vocab.json`,
`merges.txt`), `teacher/` and `teacher_settings.json`. `write_data=True`
rebuilds the shipped data instead (`build_shipped_data`).
"""

import dataclasses
import json
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from kd_keras import Distiller, serving
from kd_keras import losses as kd_losses
from kd_keras.checkpoints import StopOnNonFiniteLoss
from kd_keras.data import data_path, iter_corpus
from kd_keras.models import causal_lm
from kd_keras.phases import Phases
from kd_keras.progress import log
from kd_keras.recipes.causal_lm.config import OBJECTIVES, CausalLMConfig, parse_objectives
from kd_keras.recipes.causal_lm.report import report_text
from kd_keras.recipes.causal_lm.shipped_data import build_shipped_data
from kd_keras.storage import folder_lock, phase, write_json_atomic, write_text_atomic

__all__ = ["OBJECTIVES", "build_shipped_data", "resolved", "run"]


def _log(message):
    log(message, prefix="kd-keras distill-lm")


def resolved(config):
    """A copy of `config` with the shipped data files filled in for `None`."""
    c = dataclasses.replace(config)
    shipped = {
        "train_data": ("instructions", "train.jsonl"),
        "test_data": ("instructions", "test.jsonl"),
        "corpus": ("lm", "corpus.txt"),
    }
    for name, parts in shipped.items():
        if getattr(c, name) is None:
            setattr(c, name, data_path(*parts, override=c.data_dir))
    return c


# === Training pieces ===


def _optimizer(c, steps):
    schedule = keras.optimizers.schedules.CosineDecay(
        c.learning_rate, decay_steps=max(steps, 1), alpha=0.1
    )
    return keras.optimizers.AdamW(schedule, weight_decay=0.01, clipnorm=1.0)


def _steps(n, c, epochs):
    return epochs * -(-n // c.batch_size)


def _cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)


def _distillation_loss(objective, c):
    common = {"truncate_teacher_vocab": True, "temperature": c.temperature}
    if objective in ("forward_kl", "forward_kl_ce"):
        return kd_losses.ForwardKL(**common)
    if objective == "reverse_kl":
        return kd_losses.ReverseKL(**common)
    if objective == "skewed_forward_kl":
        return kd_losses.SkewedForwardKL(skew=c.skew, **common)
    if objective == "skewed_reverse_kl":
        return kd_losses.SkewedReverseKL(skew=c.skew, **common)
    raise ValueError(f"No distillation loss for {objective!r}.")


# === Steps ===


def _read_data(c):
    """`(train examples, test examples, corpus lines)` of the (resolved) config."""
    train_examples = causal_lm.read_instructions(c.train_data, limit=c.train_limit)
    test_examples = causal_lm.read_instructions(c.test_data, limit=c.test_limit)
    corpus_lines = list(iter_corpus([c.corpus], limit=c.corpus_limit))
    return train_examples, test_examples, corpus_lines


def _tokenizers(c, run_dir, corpus_lines, train_examples):
    """The student's BPE (learned from the corpus and the training examples only).

    Returns:
        `(vocabulary, tokenizer, teacher_vocab, teacher_tokenizer)`; the
        student's vocabulary and merges are saved in `run_dir/tokenizer/`.
    """
    bpe_texts = corpus_lines + [causal_lm.format_prompt(e) + e["output"] for e in train_examples]
    vocabulary, merges = causal_lm.train_byte_bpe(bpe_texts, c.vocabulary_size)
    serving.save_gpt2_tokenizer(vocabulary, merges, run_dir / "tokenizer")
    tokenizer = causal_lm.build_gpt2_tokenizer(vocabulary, merges)
    extra = [f"<|extra_{i}|>" for i in range(c.extra_teacher_tokens)]
    teacher_vocab = causal_lm.extend_vocabulary(vocabulary, extra)
    teacher_tokenizer = causal_lm.build_gpt2_tokenizer(teacher_vocab, merges)
    return vocabulary, tokenizer, teacher_vocab, teacher_tokenizer


def _teacher_settings(c, vocabulary_size, corpus_rows, train_rows):
    return {
        "vocabulary_size": vocabulary_size,
        "layers": c.teacher_layers,
        "dim": c.teacher_dim,
        "heads": c.teacher_heads,
        "epochs": c.teacher_epochs,
        "sequence_length": c.sequence_length,
        "batch_size": c.batch_size,
        "learning_rate": c.learning_rate,
        "seed": c.seed,
        "corpus_rows": corpus_rows,
        "train_rows": train_rows,
        "corpus": str(c.corpus),
        "train_data": str(c.train_data),
    }


def _train_teacher(c, run_dir, tokenizer, teacher_vocab, corpus, train):
    """Trains (or reloads) the teacher; returns `(model, seconds, reused)`."""
    (corpus_x, corpus_y), (train_x, train_y) = corpus, train
    settings = _teacher_settings(c, len(teacher_vocab), len(corpus_y), len(train_y))
    teacher_dir = run_dir / "teacher"
    settings_path = run_dir / "teacher_settings.json"
    if (
        not c.retrain_teacher
        and (teacher_dir / "config.json").is_file()
        and settings_path.is_file()
        and json.loads(settings_path.read_text()) == settings
    ):
        return causal_lm.load_causal_lm(teacher_dir), 0.0, True
    x = {k: np.concatenate([corpus_x[k], train_x[k]]) for k in train_x}
    y = np.concatenate([corpus_y, train_y])
    teacher = causal_lm.build_gpt2_causal_lm(
        len(teacher_vocab),
        num_layers=c.teacher_layers,
        hidden_dim=c.teacher_dim,
        num_heads=c.teacher_heads,
        max_sequence_length=c.sequence_length,
        seed=c.seed + 1,
        name="teacher",
    )
    teacher.compile(
        optimizer=_optimizer(c, _steps(len(y), c, c.teacher_epochs)),
        loss=_cross_entropy(),
        weighted_metrics=[],
    )
    # A KerasHub task batches NumPy inputs without shuffling: shuffle here.
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(y), seed=c.seed, reshuffle_each_iteration=True)
        .batch(c.batch_size)
    )
    start = time.perf_counter()
    teacher.fit(
        dataset,
        epochs=c.teacher_epochs,
        verbose=c.fit_verbose,
        callbacks=[StopOnNonFiniteLoss()],
        shuffle=False,  # the dataset shuffles itself (Keras would warn that it ignores this)
    )
    seconds = time.perf_counter() - start
    serving.save_causal_lm(teacher, teacher_dir, tokenizer=tokenizer)
    write_json_atomic(settings_path, settings)
    # Distil from the checkpoint as loaded offline, as a user with a local
    # Hugging Face / KerasHub directory would.
    return causal_lm.load_causal_lm(teacher_dir), seconds, False


def _train_student(objective, teacher, c, vocabulary_size, train):
    """Builds and trains the student of one objective; returns `(model, seconds)`."""
    x, y = train
    student = causal_lm.build_gpt2_causal_lm(
        vocabulary_size,
        num_layers=c.student_layers,
        hidden_dim=c.student_dim,
        num_heads=c.student_heads,
        max_sequence_length=c.sequence_length,
        seed=c.seed + 2,  # the same initial weights for every objective
        name=f"student_{objective}",
    )
    if objective == "student_only":
        alpha, distillation_loss = 0.0, kd_losses.ForwardKL(truncate_teacher_vocab=True)
    elif objective == "forward_kl_ce":
        alpha, distillation_loss = c.alpha, _distillation_loss(objective, c)
    else:
        alpha, distillation_loss = 1.0, _distillation_loss(objective, c)
    distiller = Distiller(teacher, student)
    distiller.compile(
        optimizer=_optimizer(c, _steps(len(y), c, c.student_epochs)),
        student_loss=_cross_entropy(),
        distillation_loss=distillation_loss,
        alpha=alpha,
        label_mask=True,
    )
    keras.utils.set_random_seed(c.seed + 3)  # the same batch order for every objective
    start = time.perf_counter()
    distiller.fit(
        x,
        y,
        batch_size=c.batch_size,
        epochs=c.student_epochs,
        verbose=c.fit_verbose,
        callbacks=[StopOnNonFiniteLoss()],
    )
    return student, time.perf_counter() - start


def _students(c, teacher, vocabulary_size, train, test, phases):
    """Trains and scores one student per objective: `{objective: results}`.

    Each objective's figures are a phase of its own (`student_OBJECTIVE`): a
    rerun after a kill trains only the objectives not finished yet.
    """
    test_x, test_y = test
    students = {}
    for objective in parse_objectives(c.objectives):
        done = phases.reused(f"student_{objective}")
        if done is None:
            student, seconds = _train_student(objective, teacher, c, vocabulary_size, train)
            result = causal_lm.masked_perplexity(student, test_x, test_y, c.batch_size)
            done = phases.mark(f"student_{objective}", {**result, "train_seconds": seconds})
            _log(f"{objective}: held-out perplexity {result['perplexity']:.3f} ({seconds:.0f} s)")
        students[objective] = done
    return students


# === The recipe ===

# Settings that change no phase's outcome.
UNFINGERPRINTED = ("run_dir", "fit_verbose", "objectives")


def run(config=None):
    """Runs the recipe; returns the metrics dict (also in `run_dir/metrics.json`).

    With `write_data`, rebuilds the shipped data (`build_shipped_data`) and
    returns its counts instead.

    Args:
        config: `CausalLMConfig` (defaults to all defaults).
    """
    config = config or CausalLMConfig()
    config.validate()
    if config.write_data:
        counts = build_shipped_data(data_folder=config.data_dir)
        _log(f"wrote the shipped data: {counts}")
        return counts
    c = resolved(config)
    run_dir = pathlib.Path(c.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, "kd-keras distill-lm", flag="--run-dir"):
        return _run(c, run_dir)


def _run(c, run_dir):
    """The recipe's steps, with the run folder held."""
    keras.utils.set_random_seed(c.seed)

    train_examples, test_examples, corpus_lines = _read_data(c)
    vocabulary, tokenizer, teacher_vocab, teacher_tokenizer = _tokenizers(
        c, run_dir, corpus_lines, train_examples
    )
    length = c.sequence_length
    train_x, train_y, train_skipped = causal_lm.encode_instructions(
        train_examples, tokenizer, length
    )
    test_x, test_y, test_skipped = causal_lm.encode_instructions(test_examples, tokenizer, length)
    corpus_x, corpus_y = causal_lm.encode_corpus(corpus_lines, tokenizer, length)

    with phase("teacher training"):
        teacher, teacher_seconds, reused = _train_teacher(
            c, run_dir, teacher_tokenizer, teacher_vocab, (corpus_x, corpus_y), (train_x, train_y)
        )
    settings = dataclasses.asdict(c)
    del settings["write_data"]
    # Each objective is a phase of its own: which ones run changes no phase's outcome.
    fingerprinted = {k: v for k, v in settings.items() if k not in UNFINGERPRINTED}
    phases = Phases(run_dir, fingerprinted, _log)
    if not reused:  # a teacher trained anew: nothing measured on another one is kept
        phases.clear()
    teacher_eval = phases.reused("teacher_eval")
    if teacher_eval is None:
        teacher_eval = causal_lm.masked_perplexity(teacher, test_x, test_y, c.batch_size)
        teacher_eval = phases.mark("teacher_eval", teacher_eval)
    _log(f"teacher: held-out perplexity {teacher_eval['perplexity']:.3f}")
    with phase("training"):
        train, test = (train_x, train_y), (test_x, test_y)
        students = _students(c, teacher, len(vocabulary), train, test, phases)

    settings["objectives"] = parse_objectives(c.objectives)
    metrics = {
        "settings": settings,
        "vocabulary_size": len(vocabulary),
        "train_examples": len(train_y),
        "train_skipped": train_skipped,
        "test_examples": len(test_y),
        "test_skipped": test_skipped,
        "corpus_rows": len(corpus_y),
        "teacher": {
            **teacher_eval,
            "vocabulary_size": len(teacher_vocab),
            "train_seconds": teacher_seconds,
            "reused": reused,
        },
        "students": students,
    }
    report = report_text(metrics)
    with phase("report"):
        write_json_atomic(run_dir / "metrics.json", metrics)
        write_text_atomic(run_dir / "report.md", report)
    print(report)
    return metrics
