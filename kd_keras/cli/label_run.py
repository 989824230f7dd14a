"""`kd-keras label`, the work: the teacher over the corpus, locally or with Apache Beam.

The flags and the checks are `kd_keras.cli.label` (`check`); the labels folder
is `kd_keras.labels`' (`label_files`), or `kd_keras.labels_beam`'s with
`--runner beam` (the `[beam]` extra).

The output folder is held for the run (`kd_keras.storage.folder_lock`: a second
`kd-keras label` or `distill` on it refuses, naming this one), and a full disk
is one line naming the file and the phase, `labeling`
(`kd_keras.storage.DiskFullError`).
"""

import logging
import os

from kd_keras.cli.label import check
from kd_keras.data import corpus_files
from kd_keras.filesystems import has_scheme
from kd_keras.labels import label_files
from kd_keras.models.teachers import load_teacher
from kd_keras.progress import log
from kd_keras.storage import folder_lock, phase

COMMAND = "kd-keras label"
PHASE = "labeling"

__all__ = ["run"]


def _label_files_beam(teacher, files, args, settings):
    """`kd_keras.labels_beam.label_files_beam`, Beam's relayed worker chatter held back."""
    # The [beam] extra, optional: imported only with --runner beam (`check` saw it installed).
    from kd_keras.labels_beam import label_files_beam

    quiet = os.environ.get("KD_KERAS_VERBOSE", "") in ("", "0")
    if quiet and not getattr(args, "verbose", False):
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
    extra = list(getattr(args, "extra_args", []))
    return label_files_beam(teacher, files, args.output, pipeline_args=extra, **settings)


def run(args):
    """Runs `kd-keras label` (after `check`); bad inputs raise (the dispatcher reports them,
    exit 2)."""
    if not hasattr(args, "files"):  # called directly, not through the dispatcher
        check(args)
    if any(has_scheme(str(f)) for f in args.files):  # left to here by `check` (tf.io.gfile)
        args.files = corpus_files(args.files)
    with folder_lock(args.output, COMMAND, flag="--output"), phase(PHASE):
        return _run(args)


def _run(args):
    """The labeling itself, the output folder held."""
    teacher = load_teacher(args.teacher)
    settings = dict(
        limit=args.limit,
        shard_size=args.shard_size,
        store=args.store,
        batch_size=args.batch_size,
        precision=args.precision,
        teacher_spec=args.teacher,
        progress=not args.no_progress,
    )
    if getattr(args, "runner", "local") == "beam":
        result = _label_files_beam(teacher, args.files, args, settings)
    else:
        result = label_files(teacher, args.files, args.output, **settings)
    if result.agreement is not None:
        a = result.agreement
        log(
            f"{a['precision']} against float32 on the first {a['sentences']} sentences: "
            f"cosine mean {a['mean_cosine']:.5f}, min {a['min_cosine']:.5f}",
            prefix="kd-keras label",
        )
    log(
        f"{result.rows} sentences in {result.shards} shards ({result.reused} kept from an "
        f"earlier run) in {result.seconds:.1f} s: {result.directory}",
        prefix="kd-keras label",
    )
    return 0
