"""`kd-keras label`: a teacher over a corpus, into sharded, resumable labels.

```
kd-keras label --teacher default --input data/transfer-en/*.txt.gz --output labels/ \\
    --shard-size 4096 --limit 100000
```

writes `labels/shard-NNNNN.npz` (sentences and embeddings) and
`labels/manifest.json` (`kd_keras.labels`). Rerun the same command after an
interruption: finished shards are kept, the rest is labeled.

`--precision int8` labels with an int8-weights copy of the teacher
(`kd_keras.quantize`) and prints the agreement with float32 (mean and minimum
cosine on the first 256 sentences), which the manifest records as
`precision_agreement` (bfloat16 does the same).

`--runner beam` runs the same pass as an Apache Beam pipeline
(`kd_keras.labels_beam`, the `[beam]` extra) and writes the same folder. The
arguments this command does not know are Beam pipeline options; those after
`--` are always (Beam's own `--runner=...` goes there). Without any, Beam's
DirectRunner runs 2 worker processes:

```
kd-keras label --input corpus/*.txt.gz --output labels/ --runner beam
kd-keras label --input /shared/corpus/*.txt --output /shared/labels --runner beam \
    -- --runner=FlinkRunner --flink_master=host:8081 --environment_type=LOOPBACK
```

This module is the command's flags and its checks (settings, the input files,
the Beam extra), read before TensorFlow loads; the labeling is
`kd_keras.cli.label_run`.
"""

from kd_keras.data import corpus_files
from kd_keras.filesystems import has_scheme

__all__ = ["BEAM_MISSING", "add_arguments", "check"]

BEAM_MISSING = "install the beam extra: pip install 'kd-keras[beam]'"


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
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "int8"),
        default="float32",
        help="float32 (exact), bfloat16 (oneDNN mixed precision: faster on CPUs with "
        "AVX-512 BF16 or AMX; embeddings within ~1e-2) or int8 (an int8-weights copy of the "
        "teacher: a quarter of the weight bytes, about float32's speed on CPU). Other than "
        "float32, prints and records the cosine agreement with float32 on the first 256 "
        "sentences",
    )
    parser.add_argument("--no-progress", action="store_true", help="report no progress")
    parser.add_argument(
        "--runner",
        choices=("local", "beam"),
        default="local",
        help="'local' (this process) or 'beam' (an Apache Beam pipeline; the [beam] extra). "
        "With 'beam', unknown arguments, and any after '--', are Beam pipeline options "
        "(default: DirectRunner, 2 worker processes)",
    )
    # The dispatcher passes the arguments it does not know here (`parse_known_args`).
    parser.set_defaults(extra_args=[])


def check(args):
    """Settings, the Beam extra and the input files, before TensorFlow loads: one-line errors.

    Sets `args.files`: the input files (`kd_keras.data.corpus_files`). Inputs on
    an object store (`gs://...`) are left as given, to be globbed once TensorFlow
    (which reads them) has loaded, by `kd_keras.cli.label_run`.
    """
    for name in ("shard_size", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    runner = getattr(args, "runner", "local")
    extra = list(getattr(args, "extra_args", []))
    if extra and runner != "beam":
        raise ValueError(
            f"unrecognized arguments: {' '.join(extra)} (Beam pipeline options need --runner beam)"
        )
    if runner == "beam":
        try:
            import apache_beam  # noqa: F401  (the optional [beam] extra: is it installed?)
        except ImportError:
            raise ImportError(BEAM_MISSING) from None
    if any(has_scheme(str(pattern)) for pattern in args.input):
        args.files = list(args.input)  # globbed and checked by the run, through tf.io.gfile
    else:  # a missing input is reported before the teacher loads
        args.files = corpus_files(args.input)
