"""`kd-keras evaluate`: a student's fidelity to its teacher where there are no labels.

```
kd-keras evaluate --teacher default --student runs/RUN/student --sentences my_texts.txt
kd-keras evaluate --teacher default --student runs/RUN/student.keras \\
    --sentences 'data/transfer-en/*.txt.gz' --limit 300 --json fidelity.json
```

For each file (one sentence per line, its first tab-separated field, plain or
`.gz`, empty lines skipped; globs are expanded), `--limit` of its sentences
(a seeded sample) go through both models, and `kd_keras.fidelity` compares
their embeddings: Spearman x100 between the two models' cosines of
`--pairs` random sentence pairs, nearest-neighbour recall@10 x100 (the share
of each sentence's 10 nearest by the teacher that are among its 10 nearest by
the student), and the pairs on which the two disagree most. A file of the
shipped transfer corpora (in a folder named `transfer-en` or `transfer-zh`) gives only its
held-out tail, the sentences `kd-keras distill` never trains on
(`kd_keras.transfer.split_heldout`), as the fidelity table of its report does.

`--teacher` and `--student` take what `kd-keras embed --model` takes: a
teacher (`'default'`, a model folder, a teacher `.keras`), a student `.keras`
with its `.preprocessor.json` sidecar, or a raw-text export folder.

This module is the command's flags and its checks (the files are read and
sampled before TensorFlow loads); the measurement is `kd_keras.cli.evaluate_run`.
"""

import pathlib

from kd_keras.data import DataError, corpus_files, read_sentences
from kd_keras.fidelity import sample_sentences
from kd_keras.transfer import is_heldout_source, split_heldout

__all__ = ["add_arguments", "check"]


def add_arguments(parser):
    """Adds the `evaluate` options to the subcommand's `argparse` parser."""
    models = "as kd-keras embed --model takes it: 'default', a model folder, an export folder, "
    parser.add_argument(
        "--teacher", default="default", help=models + "or a teacher .keras (default: default)"
    )
    parser.add_argument(
        "--student", required=True, help=models + "or a student .keras with its sidecar"
    )
    parser.add_argument(
        "--sentences",
        nargs="+",
        required=True,
        metavar="FILE",
        help="text files (or globs), one sentence per line (its first tab-separated field), "
        "plain or .gz; a transfer-en or transfer-zh file gives its held-out tail",
    )
    parser.add_argument(
        "--limit", type=int, default=2000, help="sentences per file, a seeded sample (0: all)"
    )
    parser.add_argument(
        "--pairs", type=int, default=2000, help="random sentence pairs per file for the Spearman"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    parser.add_argument("--no-progress", action="store_true", help="report no progress")


def check(args):
    """Settings and files, read before TensorFlow loads: one-line errors.

    Sets `args.sentence_sets`: `{file: sampled sentences}`.
    """
    for name, minimum in (("limit", 0), ("pairs", 1), ("batch_size", 1)):
        if getattr(args, name) < minimum:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be at least {minimum}; got {getattr(args, name)}")
    if args.json:
        out = pathlib.Path(args.json)
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--json {out}: folder {out.parent} does not exist")
        if out.is_dir():
            raise IsADirectoryError(f"--json {out} is a folder; give a file name")
    sets = {}
    for path in corpus_files(args.sentences):
        sentences = read_sentences(path)
        if is_heldout_source(path):
            sentences = split_heldout(path, sentences)[1]
        sample = sample_sentences(sentences, args.limit, args.seed)
        if len(sample) < 3:
            raise DataError(f"{path}: fidelity needs at least 3 sentences; it has {len(sample)}")
        sets[path] = sample
    args.sentence_sets = sets
