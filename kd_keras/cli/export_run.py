"""`kd-keras export`, the work: a raw-text SavedModel of a student or a teacher.

The flags and the checks are `kd_keras.cli.export` (`check`); the export is
`kd_keras.serving`'s.
"""

from kd_keras import serving
from kd_keras.cli.export import check
from kd_keras.models.bert_tokenizer import BertPreprocessor
from kd_keras.models.teachers import load_teacher
from kd_keras.storage import format_size

__all__ = ["run"]


def _student_preprocessor(args):
    """The preprocessor the options name, or `None` to read the sidecar."""
    if args.vocabulary:
        return BertPreprocessor(
            args.vocabulary,
            sequence_length=args.sequence_length or 128,
            lowercase=not args.cased,
        )
    if args.preprocessor_from_teacher:
        teacher = load_teacher(args.preprocessor_from_teacher)
        if teacher.preprocessor is None:
            raise ValueError(f"Teacher {args.preprocessor_from_teacher!r} has no preprocessor.")
        return teacher.preprocessor
    return args.preprocessor  # a path or None


def run(args):
    """Runs `kd-keras export` (after `check`); bad inputs raise (the dispatcher reports them,
    exit 2)."""
    check(args)  # cheap, so again even after the dispatcher's
    if args.teacher is not None:
        result = serving.export_teacher(
            args.teacher,
            args.out,
            sequence_length=args.sequence_length,
            overwrite=args.overwrite,
            quantize=args.quantize,
        )
    else:
        student, preprocessor = serving.load_student(
            args.student, preprocessor=_student_preprocessor(args)
        )
        result = serving.export_student(
            student,
            args.out,
            preprocessor=preprocessor,
            kind=args.kind,
            sequence_length=None if args.vocabulary else args.sequence_length,
            from_logits=args.from_logits,
            overwrite=args.overwrite,
            quantize=args.quantize,
        )
    print(result.summary())
    print(f"size on disk: {result.size_bytes} bytes ({format_size(result.size_bytes)})")
    return 0
