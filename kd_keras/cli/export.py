"""`kd-keras export`: write a raw-text SavedModel of a student or a teacher.

Examples:

```bash
# The default teacher (all-MiniLM-L6-v2), in the students' format.
kd-keras export --teacher default --out exports/teacher

# A student saved with `kd_keras.serving.save_student` (its preprocessor is
# read from the `student.preprocessor.json` sidecar): any kind (bilstm,
# static, tiny_bert, a model of your own; the modules of your own layers that
# the sidecar records are imported first).
kd-keras export --student student.keras --out exports/student

# A student whose tokenizer is the default teacher's, or a vocabulary.
kd-keras export --student student.keras --preprocessor-from-teacher default --out DIR
kd-keras export --student student.keras --vocabulary vocab.txt --sequence-length 64 --out DIR

# int8 weights (Dense, EinsumDense, embedding tables; LSTM cells and layer
# norms stay float32), the same signatures: a teacher or any student.
kd-keras export --teacher default --quantize int8 --out exports/teacher-int8
kd-keras export --student student.keras --quantize int8 --out exports/student-int8
```

Prints the export's kind, signatures and size on disk. A sentence encoder
(alone or inside a pair model) is served by `embed` (the `serving_default`)
and `similarity`, a classifier by `classify` (`kd_keras.serving.text_model`).

This module is the command's flags and its checks, read before TensorFlow
loads; the export is `kd_keras.cli.export_run`.
"""

__all__ = ["QUANTIZE_CHOICES", "add_arguments", "check"]

# `--quantize`: `kd_keras.quantize.QUANTIZE_MODES`, which imports Keras (test_cli checks
# that the two agree).
QUANTIZE_CHOICES = ("int8",)


def add_arguments(parser):
    """Adds the `export` options to an `argparse` parser.

    Args:
        parser: `argparse.ArgumentParser`.
    """
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--student",
        metavar="MODEL.keras",
        help="a student saved as .keras, of any kind, its own layers' modules recorded in its "
        "sidecar (or a whole saved Distiller: its student is exported)",
    )
    source.add_argument(
        "--teacher",
        metavar="SPEC",
        help="a teacher to export in the same format: 'default' (all-MiniLM-L6-v2) or a path",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the SavedModel folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing export at --out"
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="int8: export an int8 copy (weights of Dense, EinsumDense and embedding layers; "
        "LSTM cells, layer norms and activations stay float32). Default: float32",
    )
    tokenizer = parser.add_mutually_exclusive_group()
    tokenizer.add_argument(
        "--preprocessor",
        metavar="JSON",
        help="students: the preprocessor file (default: MODEL.preprocessor.json next to "
        "MODEL.keras, written by kd_keras.serving.save_student)",
    )
    tokenizer.add_argument(
        "--vocabulary",
        metavar="VOCAB.txt",
        help="students: build the tokenizer from a WordPiece vocabulary (see --cased)",
    )
    tokenizer.add_argument(
        "--preprocessor-from-teacher",
        metavar="SPEC",
        help="students: use this teacher's tokenizer ('default' or a path)",
    )
    parser.add_argument(
        "--sequence-length",
        type=int,
        default=None,
        metavar="N",
        help="maximum tokens per sentence, special tokens included (default: the "
        "preprocessor's; 128 with --vocabulary)",
    )
    parser.add_argument(
        "--cased",
        action="store_true",
        help="with --vocabulary: keep case and accents (default: lowercase, strip accents)",
    )
    parser.add_argument(
        "--kind",
        choices=("auto", "encoder", "pair", "classifier"),
        default="auto",
        help="students: the model kind, which decides the signatures (default: auto)",
    )
    logits = parser.add_mutually_exclusive_group()
    logits.add_argument(
        "--from-logits",
        dest="from_logits",
        action="store_true",
        default=None,
        help="classifiers: the model returns logits (softmax is added)",
    )
    logits.add_argument(
        "--no-from-logits",
        dest="from_logits",
        action="store_false",
        help="classifiers: the model returns probabilities",
    )


def _student_only_options(args):
    used = [
        flag
        for flag, value in (
            ("--preprocessor", args.preprocessor),
            ("--vocabulary", args.vocabulary),
            ("--preprocessor-from-teacher", args.preprocessor_from_teacher),
            ("--cased", args.cased),
            ("--kind", None if args.kind == "auto" else args.kind),
            ("--from-logits/--no-from-logits", args.from_logits),
        )
        if value not in (None, False)
    ]
    return used


def check(args):
    """Options that do not go together, before TensorFlow loads: one-line errors."""
    if args.teacher is not None and _student_only_options(args):
        raise ValueError(f"{', '.join(_student_only_options(args))} only apply to --student.")
    if args.cased and not args.vocabulary:
        raise ValueError("--cased only applies with --vocabulary.")
