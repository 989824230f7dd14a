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

This module is the command's flags and its checks, read before TensorFlow
loads; the embedding is `kd_keras.cli.embed_run` (`embed_sentences`).
"""

import pathlib

from kd_keras.data import read_sentences

__all__ = ["add_arguments", "check"]


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


def check(args):
    """Reads the input and checks the settings before TensorFlow loads: one-line errors.

    Sets `args.sentences`: the input's lines (blank ones kept as empty sentences).
    """
    args.sentences = read_sentences(args.input, column=None, keep_blank=True)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive; received {args.batch_size}.")
    output = pathlib.Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {output.parent}")
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; give a .npy file name")
