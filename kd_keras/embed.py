"""`kd-keras embed`: sentence embeddings of a text file, one sentence a line.

```
kd-keras embed --model default --input sentences.txt --output embeddings.npy
```

writes a float32 `[N, D]` array (row `i` = line `i`), computed as the
model's own pipeline defines it (all-MiniLM-L6-v2: mean pooled over at most
256 tokens, L2-normalized).
"""

import os
import pathlib
import sys
import tempfile

__all__ = ["add_arguments", "main", "read_sentences"]


def add_arguments(parser):
    """Adds the `embed` options to an `argparse` parser.

    Args:
        parser: the subcommand's `argparse.ArgumentParser`.
    """
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
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def read_sentences(path):
    """Reads one sentence per line from a UTF-8 file.

    A UTF-8 byte order mark is skipped, line ends (`\\n`, `\\r\\n`) are
    removed, and a final newline does not start an extra (empty) sentence.
    Empty lines are kept as empty sentences, so row `i` is line `i + 1`.

    Args:
        path: the text file.

    Returns:
        List of strings.
    """
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"Input file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"Input is a directory, not a text file: {path}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"{path}, line {line} (byte {column} of the line): not valid UTF-8 "
            f"(byte 0x{data[e.start]:02x})."
        ) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    sentences = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not sentences:
        raise ValueError(f"Input file has no sentences: {path}")
    return sentences


def _save_npy_atomic(path, array):
    import numpy as np

    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(args):
    """Runs `kd-keras embed`.

    Args:
        args: the parsed `argparse.Namespace`.

    Returns:
        Exit status: 0 on success, 1 on a bad input, model or output path.
    """
    try:
        sentences = read_sentences(args.input)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be positive; received {args.batch_size}.")
        output = pathlib.Path(args.output)
        if not output.parent.is_dir():
            raise FileNotFoundError(f"Output folder does not exist: {output.parent}")
        import numpy as np

        from models.teachers import load_teacher

        teacher = load_teacher(args.model)
        embeddings = teacher.embed(
            sentences,
            batch_size=args.batch_size,
            jit_compile=args.jit_compile,
            progress=not args.no_progress,
        )
        embeddings = np.asarray(embeddings, dtype="float32")
        _save_npy_atomic(output, embeddings)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"kd-keras embed: error: {e}", file=sys.stderr)
        return 1
    if not args.no_progress:
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {output}")
    return 0
