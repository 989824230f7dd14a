"""Token-level distillation of a causal LM, compared across objectives.

With no pretrained LM offline, the recipe first trains its own teacher:

1. a byte-level BPE tokenizer is learned from the shipped corpus and
   instruction data (`models.causal_lm.train_byte_bpe`);
2. the teacher, a KerasHub `GPT2CausalLM` (default 4 layers x 128), is trained
   on the corpus (`data/lm/corpus.txt`, every token a target) and the
   instruction training set (`data/instructions/train.jsonl`, answer tokens
   only). Its vocabulary is the student's plus a few appended tokens, so the
   losses run with `truncate_teacher_vocab=True`. It is saved as a local
   KerasHub preset (`run_dir/teacher/`) and loaded back offline from there;
   a rerun with the same settings reuses it;
3. one student (`GPT2CausalLM`, default 2 layers x 64, same tokenizer, same
   initial weights) per objective is trained for the same number of steps on
   the instruction training set, with the labels of prompt tokens and
   padding set to -100 (`Distiller.compile(label_mask=True)` and
   `SparseCategoricalCrossentropy(ignore_class=-100)`):

   | objective | loss |
   |---|---|
   | `student_only` | cross-entropy on the answers (no teacher) |
   | `forward_kl` | `ForwardKL` (alpha = 1) |
   | `reverse_kl` | `ReverseKL` (alpha = 1) |
   | `skewed_forward_kl` | `SkewedForwardKL(skew)` (alpha = 1) |
   | `skewed_reverse_kl` | `SkewedReverseKL(skew)` (alpha = 1) |
   | `forward_kl_ce` | `alpha * ForwardKL + (1 - alpha) * cross-entropy` |

4. every model is scored by its perplexity on the answer tokens of the
   held-out instruction set (`data/instructions/test.jsonl`).

The run directory gets `metrics.json`, `report.md` (the comparison table),
`tokenizer/` (`vocab.json`, `merges.txt`) and `teacher/`. Run (about 10
minutes on 2 CPU cores):

    .venv/bin/python examples/distill_lm.py --run-dir runs/lm

and a smoke test in seconds:

    .venv/bin/python examples/distill_lm.py --run-dir /tmp/lm --train-limit 64 \\
        --test-limit 32 --corpus-limit 200 --vocabulary-size 300 --teacher-epochs 1 \\
        --student-epochs 1

`--write-data` rebuilds the shipped `data/instructions/*.jsonl` and
`data/lm/corpus.txt` from the SST-2 and STS-B files in `data/` (see
`data/instructions/README.md`).
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kd_keras import Distiller  # noqa: E402
from kd_keras import losses as kd_losses  # noqa: E402
from kd_keras.export import write_text_atomic  # noqa: E402
from models import causal_lm  # noqa: E402

__all__ = ["OBJECTIVES", "build_shipped_data", "main", "parse_args"]

LM_DIR = ROOT / "data" / "lm"
INSTRUCTIONS_DIR = ROOT / "data" / "instructions"
OBJECTIVES = (
    "student_only",
    "forward_kl",
    "reverse_kl",
    "skewed_forward_kl",
    "skewed_reverse_kl",
    "forward_kl_ce",
)
_LABELS = {
    "student_only": "student alone (cross-entropy)",
    "forward_kl": "forward KL",
    "reverse_kl": "reverse KL",
    "skewed_forward_kl": "skewed forward KL",
    "skewed_reverse_kl": "skewed reverse KL",
    "forward_kl_ce": "forward KL + cross-entropy",
}


# === Shipped data ===


def build_shipped_data(per_task_train=1000, per_task_test=100, seed=0):
    """Writes `data/instructions/{train,test}.jsonl` and `data/lm/corpus.txt`.

    Three tasks, training examples from the SST-2 / STS-B training files and
    held-out ones from their dev files (no sentence in both):
    - sentiment: "Rate the sentiment ..." -> `positive` / `negative`;
    - paraphrase: an STS-B pair scored >= 4 -> the other sentence;
    - continuation: the first half of a sentence -> the rest.
    The corpus is the distinct STS-B training sentences.
    """
    from kd_keras.data import SST2_DIR, STSB_DIR, read_lines, read_stsb

    rng = np.random.default_rng(seed)

    def sst(path, n):
        rows = []
        for _, line in read_lines(path):
            text, label = line.rsplit("\t", 1)
            words = text.split()
            if 6 <= len(words) <= 16:
                rows.append((" ".join(words), "positive" if label.strip() == "1" else "negative"))
        rows = list(dict.fromkeys(rows))
        pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
        return [
            {
                "instruction": "Rate the sentiment of this review as positive or negative.",
                "input": rows[i][0],
                "output": rows[i][1],
            }
            for i in sorted(pick)
        ]

    def sts(path, n):
        a, b, scores = read_stsb(path)
        pairs = [(x, y) for x, y, s in zip(a, b, scores, strict=True) if s >= 4.0 and len(x) < 110]
        sentences = [s for s in dict.fromkeys(a + b) if 6 <= len(s.split()) <= 16]
        pick = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
        paraphrase = [
            {
                "instruction": "Write a sentence that means the same as this one.",
                "input": pairs[i][0],
                "output": pairs[i][1],
            }
            for i in sorted(pick)
        ]
        pick = rng.choice(len(sentences), size=min(n, len(sentences)), replace=False)
        continuation = []
        for i in sorted(pick):
            words = sentences[i].split()
            half = len(words) // 2
            continuation.append(
                {
                    "instruction": "Continue the sentence.",
                    "input": " ".join(words[:half]),
                    "output": " ".join(words[half:]),
                }
            )
        return paraphrase + continuation

    train = sst(os.path.join(SST2_DIR, "sentiment-train"), per_task_train)
    train += sts(os.path.join(STSB_DIR, "sts-train.csv"), per_task_train)
    test = sst(os.path.join(SST2_DIR, "sentiment-dev"), per_task_test)
    test += sts(os.path.join(STSB_DIR, "sts-dev.csv"), per_task_test)
    for examples in (train, test):
        order = rng.permutation(len(examples))
        examples[:] = [examples[i] for i in order]
    INSTRUCTIONS_DIR.mkdir(parents=True, exist_ok=True)
    for name, examples in (("train", train), ("test", test)):
        with open(INSTRUCTIONS_DIR / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for example in examples:
                f.write(json.dumps(example, ensure_ascii=False) + "\n")
    a, b, _ = read_stsb(os.path.join(STSB_DIR, "sts-train.csv"))
    LM_DIR.mkdir(parents=True, exist_ok=True)
    corpus = [s.strip() for s in dict.fromkeys(a + b) if s.strip()]
    (LM_DIR / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    return {"train": len(train), "test": len(test), "corpus": len(corpus)}


# === Recipe ===


def parse_args(argv=None):
    """The command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default="runs/lm", help="Output folder (created).")
    p.add_argument("--train-data", default=str(INSTRUCTIONS_DIR / "train.jsonl"))
    p.add_argument("--test-data", default=str(INSTRUCTIONS_DIR / "test.jsonl"))
    p.add_argument("--corpus", default=str(LM_DIR / "corpus.txt"))
    p.add_argument("--train-limit", type=int, default=None, help="Instruction examples used.")
    p.add_argument("--test-limit", type=int, default=None, help="Held-out examples scored.")
    p.add_argument("--corpus-limit", type=int, default=4000, help="Corpus lines used.")
    p.add_argument("--sequence-length", type=int, default=64)
    p.add_argument("--vocabulary-size", type=int, default=1024, help="Student BPE vocabulary.")
    p.add_argument(
        "--extra-teacher-tokens",
        type=int,
        default=8,
        help="Tokens appended to the teacher's vocabulary (handled by truncate_teacher_vocab).",
    )
    p.add_argument("--teacher-layers", type=int, default=4)
    p.add_argument("--teacher-dim", type=int, default=128)
    p.add_argument("--teacher-heads", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument("--student-dim", type=int, default=64)
    p.add_argument("--student-heads", type=int, default=2)
    p.add_argument("--student-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--skew", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=0.5, help="KL weight of forward_kl_ce.")
    p.add_argument(
        "--objectives",
        default=",".join(OBJECTIVES),
        help=f"Comma-separated subset of {', '.join(OBJECTIVES)}.",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain-teacher", action="store_true", help="Ignore a saved teacher.")
    p.add_argument("--write-data", action="store_true", help="Rebuild the shipped data and exit.")
    p.add_argument("--verbose", type=int, default=0, help="Keras fit verbosity.")
    args = p.parse_args(argv)
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = sorted(set(args.objectives) - set(OBJECTIVES))
    if unknown:
        p.error(f"unknown objectives {unknown}; choose from {list(OBJECTIVES)}")
    return args


def _optimizer(args, steps):
    schedule = keras.optimizers.schedules.CosineDecay(
        args.learning_rate, decay_steps=max(steps, 1), alpha=0.1
    )
    return keras.optimizers.AdamW(schedule, weight_decay=0.01, clipnorm=1.0)


def _steps(n, args, epochs):
    return epochs * -(-n // args.batch_size)


def _cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100)


def _distillation_loss(objective, args):
    common = {"truncate_teacher_vocab": True, "temperature": args.temperature}
    if objective in ("forward_kl", "forward_kl_ce"):
        return kd_losses.ForwardKL(**common)
    if objective == "reverse_kl":
        return kd_losses.ReverseKL(**common)
    if objective == "skewed_forward_kl":
        return kd_losses.SkewedForwardKL(skew=args.skew, **common)
    if objective == "skewed_reverse_kl":
        return kd_losses.SkewedReverseKL(skew=args.skew, **common)
    raise ValueError(f"No distillation loss for {objective!r}.")


def _teacher_settings(args, vocabulary_size, corpus_rows, train_rows):
    return {
        "vocabulary_size": vocabulary_size,
        "layers": args.teacher_layers,
        "dim": args.teacher_dim,
        "heads": args.teacher_heads,
        "epochs": args.teacher_epochs,
        "sequence_length": args.sequence_length,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "corpus_rows": corpus_rows,
        "train_rows": train_rows,
        "corpus": str(args.corpus),
        "train_data": str(args.train_data),
    }


def _train_teacher(args, run_dir, tokenizer, teacher_vocab, corpus, train):
    """Trains (or reloads) the teacher; returns `(model, seconds, reused)`."""
    (corpus_x, corpus_y), (train_x, train_y) = corpus, train
    settings = _teacher_settings(args, len(teacher_vocab), len(corpus_y), len(train_y))
    teacher_dir = run_dir / "teacher"
    settings_path = run_dir / "teacher_settings.json"
    if (
        not args.retrain_teacher
        and (teacher_dir / "config.json").is_file()
        and settings_path.is_file()
        and json.loads(settings_path.read_text()) == settings
    ):
        return causal_lm.load_causal_lm(teacher_dir), 0.0, True
    x = {k: np.concatenate([corpus_x[k], train_x[k]]) for k in train_x}
    y = np.concatenate([corpus_y, train_y])
    teacher = causal_lm.build_gpt2_causal_lm(
        len(teacher_vocab),
        num_layers=args.teacher_layers,
        hidden_dim=args.teacher_dim,
        num_heads=args.teacher_heads,
        max_sequence_length=args.sequence_length,
        seed=args.seed + 1,
        name="teacher",
    )
    teacher.compile(
        optimizer=_optimizer(args, _steps(len(y), args, args.teacher_epochs)),
        loss=_cross_entropy(),
        weighted_metrics=[],
    )
    # A KerasHub task batches NumPy inputs without shuffling: shuffle here.
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(y), seed=args.seed, reshuffle_each_iteration=True)
        .batch(args.batch_size)
    )
    start = time.perf_counter()
    teacher.fit(dataset, epochs=args.teacher_epochs, verbose=args.verbose)
    seconds = time.perf_counter() - start
    causal_lm.save_causal_lm(teacher, teacher_dir, tokenizer=tokenizer)
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    # Distil from the checkpoint as loaded offline, as a user with a local
    # Hugging Face / KerasHub directory would.
    return causal_lm.load_causal_lm(teacher_dir), seconds, False


def _train_student(objective, teacher, args, vocabulary_size, train):
    x, y = train
    student = causal_lm.build_gpt2_causal_lm(
        vocabulary_size,
        num_layers=args.student_layers,
        hidden_dim=args.student_dim,
        num_heads=args.student_heads,
        max_sequence_length=args.sequence_length,
        seed=args.seed + 2,  # the same initial weights for every objective
        name=f"student_{objective}",
    )
    if objective == "student_only":
        alpha, distillation_loss = 0.0, kd_losses.ForwardKL(truncate_teacher_vocab=True)
    elif objective == "forward_kl_ce":
        alpha, distillation_loss = args.alpha, _distillation_loss(objective, args)
    else:
        alpha, distillation_loss = 1.0, _distillation_loss(objective, args)
    distiller = Distiller(teacher, student)
    distiller.compile(
        optimizer=_optimizer(args, _steps(len(y), args, args.student_epochs)),
        student_loss=_cross_entropy(),
        distillation_loss=distillation_loss,
        alpha=alpha,
        label_mask=True,
    )
    keras.utils.set_random_seed(args.seed + 3)  # the same batch order for every objective
    start = time.perf_counter()
    distiller.fit(
        x, y, batch_size=args.batch_size, epochs=args.student_epochs, verbose=args.verbose
    )
    return student, time.perf_counter() - start


def _report(metrics):
    teacher = metrics["teacher"]
    students = metrics["students"]
    baseline = students.get("student_only", {}).get("perplexity")
    lines = [
        "# Token-level LM distillation",
        "",
        f"Teacher: GPT-2 {metrics['settings']['teacher_layers']} layers x "
        f"{metrics['settings']['teacher_dim']}, vocabulary {teacher['vocabulary_size']} "
        f"({metrics['settings']['extra_teacher_tokens']} tokens more than the student's, "
        "truncated by the losses). "
        f"Students: GPT-2 {metrics['settings']['student_layers']} layers x "
        f"{metrics['settings']['student_dim']}, vocabulary {metrics['vocabulary_size']}, "
        f"{metrics['settings']['student_epochs']} epochs x {metrics['train_examples']} "
        "examples each, same initial weights, same batches.",
        "",
        f"Held-out perplexity on the answer tokens of {metrics['test_examples']} examples "
        f"({teacher['tokens']} tokens; prompt and padding ignored).",
        "",
        "| model | objective | held-out perplexity | vs student alone | train s |",
        "|---|---|---:|---:|---:|",
        f"| teacher | cross-entropy (corpus + instructions) | {teacher['perplexity']:.3f} | "
        f"| {teacher['train_seconds']:.0f} |",
    ]
    for name, row in students.items():
        delta = ""
        if baseline is not None and name != "student_only":
            delta = f"{100.0 * (row['perplexity'] - baseline) / baseline:+.1f}%"
        lines.append(
            f"| student | {_LABELS[name]} | {row['perplexity']:.3f} | {delta} | "
            f"{row['train_seconds']:.0f} |"
        )
    distilled = {k: v for k, v in students.items() if k != "student_only"}
    if distilled:
        best = min(distilled, key=lambda k: distilled[k]["perplexity"])
        lines += ["", f"Best distillation objective: {_LABELS[best]} "]
        lines[-1] += f"(perplexity {distilled[best]['perplexity']:.3f}"
        if baseline is not None:
            gain = baseline - distilled[best]["perplexity"]
            side = "below" if gain >= 0 else "above"
            lines[-1] += f", {abs(gain):.3f} {side} the student alone at {baseline:.3f}"
        lines[-1] += ")."
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Runs the recipe; returns the metrics dict (also in `run_dir/metrics.json`)."""
    args = parse_args(argv)
    if args.write_data:
        print(build_shipped_data())
        return None
    run_dir = pathlib.Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    train_examples = causal_lm.read_instructions(args.train_data, limit=args.train_limit)
    test_examples = causal_lm.read_instructions(args.test_data, limit=args.test_limit)
    with open(args.corpus, encoding="utf-8") as f:
        corpus_lines = [line.strip() for line in f if line.strip()]
    if args.corpus_limit is not None:
        corpus_lines = corpus_lines[: args.corpus_limit]

    # Tokenizer: learned from the corpus and the training examples only.
    tokenizer_dir = run_dir / "tokenizer"
    bpe_texts = corpus_lines + [causal_lm.format_prompt(e) + e["output"] for e in train_examples]
    vocabulary, merges = causal_lm.train_byte_bpe(bpe_texts, args.vocabulary_size)
    causal_lm.save_gpt2_tokenizer(vocabulary, merges, tokenizer_dir)
    tokenizer = causal_lm.build_gpt2_tokenizer(vocabulary, merges)
    extra = [f"<|extra_{i}|>" for i in range(args.extra_teacher_tokens)]
    teacher_vocab = causal_lm.extend_vocabulary(vocabulary, extra)
    teacher_tokenizer = causal_lm.build_gpt2_tokenizer(teacher_vocab, merges)

    length = args.sequence_length
    train_x, train_y, train_skipped = causal_lm.encode_instructions(
        train_examples, tokenizer, length
    )
    test_x, test_y, test_skipped = causal_lm.encode_instructions(test_examples, tokenizer, length)
    corpus_x, corpus_y = causal_lm.encode_corpus(corpus_lines, tokenizer, length)

    teacher, teacher_seconds, reused = _train_teacher(
        args,
        run_dir,
        teacher_tokenizer,
        teacher_vocab,
        (corpus_x, corpus_y),
        (train_x, train_y),
    )
    teacher_eval = causal_lm.masked_perplexity(teacher, test_x, test_y, args.batch_size)
    print(f"teacher: held-out perplexity {teacher_eval['perplexity']:.3f}", flush=True)

    students = {}
    for objective in args.objectives:
        student, seconds = _train_student(
            objective, teacher, args, len(vocabulary), (train_x, train_y)
        )
        result = causal_lm.masked_perplexity(student, test_x, test_y, args.batch_size)
        students[objective] = {**result, "train_seconds": seconds}
        print(
            f"{objective}: held-out perplexity {result['perplexity']:.3f} ({seconds:.0f} s)",
            flush=True,
        )

    settings = {k: v for k, v in vars(args).items() if k != "write_data"}
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
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    report = _report(metrics)
    write_text_atomic(run_dir / "report.md", report)
    print(report)
    return metrics


if __name__ == "__main__":
    main()
