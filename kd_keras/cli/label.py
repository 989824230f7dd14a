"""`kd-keras label`: a teacher over a corpus, into sharded, resumable labels.

```
kd-keras label --teacher default --input data/transfer-en/*.txt.gz --output labels/ \\
    --shard-size 4096 --limit 100000
```

writes `labels/shard-NNNNN.npz` (sentences and embeddings) and
`labels/manifest.json` (`kd_keras.labels`). Rerun the same command after an
interruption: finished shards are kept, the rest is labeled.
"""

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    """Adds the `label` options to the subcommand's `argparse` parser."""
    parser.add_argument(
        "--teacher", default="default", help="'default' (offline all-MiniLM-L6-v2) or a path"
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="text files or glob patterns, one sentence per line (.gz too; blank lines skipped)",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="the labels folder")
    parser.add_argument("--shard-size", type=int, default=4096, help="sentences per shard")
    parser.add_argument("--limit", type=int, default=None, help="at most this many sentences")
    parser.add_argument(
        "--store",
        choices=("float32", "float16"),
        default="float32",
        help="precision on disk (float16 halves it; read back as float32)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per teacher batch")
    parser.add_argument("--no-progress", action="store_true", help="report no progress")


def run(args):
    """Runs `kd-keras label`; bad inputs raise (the dispatcher reports them, exit 2)."""
    from kd_keras.data import corpus_files

    for name in ("shard_size", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    files = corpus_files(args.input)  # a missing input is reported before the teacher loads

    from kd_keras.labels import label_files
    from kd_keras.models.teachers import load_teacher
    from kd_keras.progress import log

    teacher = load_teacher(args.teacher)
    result = label_files(
        teacher,
        files,
        args.output,
        limit=args.limit,
        shard_size=args.shard_size,
        store=args.store,
        batch_size=args.batch_size,
        teacher_spec=args.teacher,
        progress=not args.no_progress,
    )
    log(
        f"{result.rows} sentences in {result.shards} shards ({result.reused} kept from an "
        f"earlier run) in {result.seconds:.1f} s: {result.directory}",
        prefix="kd-keras label",
    )
    return 0
