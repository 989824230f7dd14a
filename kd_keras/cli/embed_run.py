"""`kd-keras embed`, the work: sentence embeddings by any model `--model` names.

`embed_sentences(spec, sentences)` embeds with a teacher, a student `.keras`
(with its tokenizer sidecar) or a raw-text export folder; `run(args)` writes
them to `--output` (the flags and the checks: `kd_keras.cli.embed`).
"""

import pathlib

import numpy as np

from kd_keras.cli.embed import check
from kd_keras.evaluation import embed_text_export
from kd_keras.models.teachers import load_teacher
from kd_keras.progress import progress_bar
from kd_keras.serving import load_student, preprocessor_sidecar_path
from kd_keras.serving.model_kinds import check_exportable, feed, pair_tower
from kd_keras.storage import save_npy_atomic
from kd_keras.teacher_pass import run_teacher

__all__ = ["embed_sentences", "run"]


def _embed_with_export(path, sentences, batch_size, jit_compile, progress):
    """Runs an export folder's `embed` signature, batches of similar length."""
    if jit_compile:
        raise ValueError(f"--jit-compile applies to Keras models; {path} is a SavedModel export.")
    bar = progress_bar(len(sentences), "embed", unit="sent", enabled=progress)
    try:
        return embed_text_export(path, sentences, batch_size, progress=bar)
    finally:
        bar.close()


def _sentence_encoder(student, path):
    """A callable on packed BERT inputs giving `student`'s sentence embeddings."""
    kind = check_exportable(student, "auto")
    if kind == "classifier":
        raise ValueError(f"{path}: {student.name!r} is a classifier, not a sentence encoder.")
    encoder = pair_tower(student) if kind == "pair" else student

    def encode(inputs, training=False):
        return encoder(feed(encoder.input, inputs), training=training)

    return encode


def _keras_model(spec):
    """`(model on BERT inputs, preprocessor)` for a teacher spec or a student `.keras`."""
    path = pathlib.Path(spec)
    sidecar = preprocessor_sidecar_path(path)
    if path.suffix == ".keras" and sidecar.is_file():
        student, preprocessor = load_student(path)
        return _sentence_encoder(student, path), preprocessor

    teacher = load_teacher(spec)
    if teacher.preprocessor is None:
        raise ValueError(
            f"{path}: no tokenizer: the model has none and {sidecar} does not exist (save a "
            "student with kd_keras.serving.save_student, which writes it)."
        )
    return teacher, teacher.preprocessor


def embed_sentences(spec, sentences, batch_size=64, jit_compile=False, progress=True):
    """`[N, D]` embeddings of `sentences` by the model `--model spec` names (see the module).

    Args:
        spec: str. A teacher spec, a student `.keras` with its sidecar, or a
            raw-text export folder.
        sentences: list of str.
        batch_size: int.
        jit_compile: bool. XLA for a Keras model (an export refuses it).
        progress: bool. A progress bar.
    """
    model_path = pathlib.Path(spec)
    named = spec in ("default", "m3e-small")  # teachers by name, never a folder
    if not named and model_path.is_dir() and (model_path / "saved_model.pb").is_file():
        return _embed_with_export(model_path, sentences, batch_size, jit_compile, progress)
    model, preprocessor = _keras_model(spec)
    return run_teacher(
        model,
        sentences,
        preprocessor=preprocessor,
        batch_size=batch_size,
        jit_compile=jit_compile,
        progress=progress,
    )


def run(args):
    """Runs `kd-keras embed` (after `check`); bad inputs raise (the dispatcher reports them,
    exit 2)."""
    if not hasattr(args, "sentences"):  # called directly, not through the dispatcher
        check(args)
    embeddings = embed_sentences(
        args.model,
        args.sentences,
        batch_size=args.batch_size,
        jit_compile=args.jit_compile,
        progress=not args.no_progress,
    )
    output = pathlib.Path(args.output)
    save_npy_atomic(output, np.asarray(embeddings, dtype="float32"))
    if not args.no_progress:
        print(f"wrote {len(args.sentences)} x {embeddings.shape[1]} embeddings to {output}")
    return 0
