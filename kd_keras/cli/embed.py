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

__all__ = ["add_arguments", "run"]


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


def _embed_with_export(path, sentences, args):
    """Runs an export folder's `embed` signature, batches of similar length."""
    import numpy as np
    import tensorflow as tf

    from kd_keras.progress import progress_bar
    from kd_keras.serving import load_text_export

    if args.jit_compile:
        raise ValueError(f"--jit-compile applies to Keras models; {path} is a SavedModel export.")
    signatures = load_text_export(path).signatures
    if "embed" not in signatures:
        raise ValueError(
            f"{path}: the export has no `embed` signature (it has "
            f"{', '.join(sorted(signatures))}); kd-keras embed needs a sentence encoder."
        )
    embed = signatures["embed"]
    order = np.argsort([len(s) for s in sentences], kind="stable")
    embeddings = None
    bar = progress_bar(len(sentences), "embed", unit="sent", enabled=not args.no_progress)
    try:
        for start in range(0, len(order), args.batch_size):
            rows = order[start : start + args.batch_size]
            batch = tf.constant([sentences[i] for i in rows], tf.string)
            vectors = embed(sentences=batch)["embedding"].numpy()
            if embeddings is None:
                embeddings = np.empty((len(sentences), vectors.shape[1]), np.float32)
            embeddings[rows] = vectors
            bar.update(len(rows))
    finally:
        bar.close()
    return embeddings


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
    from kd_keras.teacher_pass import run_teacher

    model_path = pathlib.Path(args.model)
    named = args.model in ("default", "m3e-small")  # teachers by name, never a folder
    if not named and model_path.is_dir() and (model_path / "saved_model.pb").is_file():
        embeddings = _embed_with_export(model_path, sentences, args)
    else:
        model, preprocessor = _keras_model(args.model)
        embeddings = run_teacher(
            model,
            sentences,
            preprocessor=preprocessor,
            batch_size=args.batch_size,
            jit_compile=args.jit_compile,
            progress=not args.no_progress,
        )
    save_npy_atomic(output, np.asarray(embeddings, dtype="float32"))
    if not args.no_progress:
        print(f"wrote {len(sentences)} x {embeddings.shape[1]} embeddings to {output}")
    return 0
