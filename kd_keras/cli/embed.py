"""`kd-keras embed`: sentence embeddings of a text file, one sentence a line.

```
kd-keras embed --model default --input sentences.txt --output embeddings.npy
kd-keras embed --model runs/RUN/student.keras --input sentences.txt --output student.npy
kd-keras embed --model runs/RUN/student --input sentences.txt --output export.npy
```

writes a float32 `[N, D]` array (row `i` = line `i + 1`; blank lines are kept
as empty sentences), computed as the model's own pipeline defines it
(all-MiniLM-L6-v2: mean pooled over at most 256 tokens, L2-normalized).

`--model` takes a teacher (`'default'`, a Hugging Face / sentence-transformers
folder, a Google BERT checkpoint, a KerasHub preset, a teacher `.keras`), a
student `.keras` saved with its `.preprocessor.json` sidecar
(`kd_keras.serving.save_student`; a pair model is embedded by its encoder
tower), or a raw-text export folder written by kd-keras (its `embed`
signature).
"""

import pathlib

__all__ = ["add_arguments", "embed_sentences", "run"]


def add_arguments(parser):
    """Adds the `embed` options to the subcommand's `argparse` parser."""
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (offline all-MiniLM-L6-v2), a model folder (Hugging Face / "
        "sentence-transformers, Google BERT checkpoint, KerasHub preset), a kd-keras export "
        "folder (its `embed` signature), a student .keras with its .preprocessor.json "
        "sidecar, or a teacher .keras file",
    )
    parser.add_argument("--input", required=True, help="UTF-8 text file, one sentence per line")
    parser.add_argument("--output", required=True, help="output .npy file (float32 [N, D])")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    parser.add_argument(
        "--jit-compile", action="store_true", help="compile the forward pass with XLA"
    )
    parser.add_argument("--no-progress", action="store_true", help="report no progress")


def _embed_with_export(path, sentences, batch_size, jit_compile, progress):
    """Runs an export folder's `embed` signature, batches of similar length."""
    from kd_keras.evaluation import embed_text_export
    from kd_keras.progress import progress_bar

    if jit_compile:
        raise ValueError(f"--jit-compile applies to Keras models; {path} is a SavedModel export.")
    bar = progress_bar(len(sentences), "embed", unit="sent", enabled=progress)
    try:
        return embed_text_export(path, sentences, batch_size, progress=bar)
    finally:
        bar.close()


def _sentence_encoder(student, path):
    """A callable on packed BERT inputs giving `student`'s sentence embeddings."""
    from kd_keras.serving.model_kinds import check_exportable, feed, pair_tower

    kind = check_exportable(student, "auto")
    if kind == "classifier":
        raise ValueError(f"{path}: {student.name!r} is a classifier, not a sentence encoder.")
    encoder = pair_tower(student) if kind == "pair" else student

    def encode(inputs, training=False):
        return encoder(feed(encoder.input, inputs), training=training)

    return encode


def _keras_model(spec):
    """`(model on BERT inputs, preprocessor)` for a teacher spec or a student `.keras`."""
    from kd_keras.serving import load_student, preprocessor_sidecar_path

    path = pathlib.Path(spec)
    sidecar = preprocessor_sidecar_path(path)
    if path.suffix == ".keras" and sidecar.is_file():
        student, preprocessor = load_student(path)
        return _sentence_encoder(student, path), preprocessor

    from kd_keras.models.teachers import load_teacher

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
    from kd_keras.teacher_pass import run_teacher

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
    """Runs `kd-keras embed`; bad inputs raise (the dispatcher reports them, exit 2)."""
    from kd_keras.data import read_sentences

    sentences = read_sentences(args.input, column=None, keep_blank=True)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive; received {args.batch_size}.")
    output = pathlib.Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {output.parent}")
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; give a .npy file name")

    import numpy as np

    from kd_keras.storage import save_npy_atomic

    embeddings = embed_sentences(
        args.model,
        sentences,
        batch_size=args.batch_size,
        jit_compile=args.jit_compile,
        progress=not args.no_progress,
    )
    save_npy_atomic(output, np.asarray(embeddings, dtype="float32"))
    if not args.no_progress:
        print(f"wrote {len(sentences)} x {embeddings.shape[1]} embeddings to {output}")
    return 0
