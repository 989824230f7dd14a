"""`kd-keras embed`: sentence embeddings of a text file, one sentence a line.

```
kd-keras embed --model default --input sentences.txt --output embeddings.npy
```

writes a float32 `[N, D]` array (row `i` = line `i + 1`; blank lines are kept
as empty sentences), computed as the model's own pipeline defines it
(all-MiniLM-L6-v2: mean pooled over at most 256 tokens, L2-normalized).
"""

import pathlib

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    """Adds the `embed` options to the subcommand's `argparse` parser."""
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (offline all-MiniLM-L6-v2), a model folder (Hugging Face / "
        "sentence-transformers, Google BERT checkpoint, KerasHub preset) or a .keras file",
    )
    parser.add_argument("--input", required=True, help="UTF-8 text file, one sentence per line")
    parser.add_argument("--output", required=True, help="output .npy file (float32 [N, D])")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    parser.add_argument(
        "--jit-compile", action="store_true", help="compile the forward pass with XLA"
    )
    parser.add_argument("--no-progress", action="store_true", help="report no progress")


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

    from kd_keras.models.teachers import load_teacher
    from kd_keras.storage import save_npy_atomic
    from kd_keras.teacher_pass import run_teacher

    teacher = load_teacher(args.model)
    embeddings = run_teacher(
        teacher,
        sentences,
        batch_size=args.batch_size,
        jit_compile=args.jit_compile,
        progress=not args.no_progress,
    )
    save_npy_atomic(output, np.asarray(embeddings, dtype="float32"))
    if not args.no_progress:
        print(f"wrote {len(sentences)} x {embeddings.shape[1]} embeddings to {output}")
    return 0
