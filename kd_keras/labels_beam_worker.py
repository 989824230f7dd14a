"""The Apache Beam workers of `kd_keras.labels_beam`: one shard per element.

Each worker process imports this module when it unpickles `LabelShard`, before
its `setup` runs; so the module imports no TensorFlow (only Beam, NumPy and
kd-keras' TF-free modules), and `setup` loads TensorFlow after
`kd_keras.cli.quiet_tensorflow()`, which holds back its start-up lines in
every worker. The driver side (planning, the teacher's export, the manifest)
is `kd_keras.labels_beam`. The output folder may be on an object store
(`gs://...`: `kd_keras.filesystems`, which loads TensorFlow for such a path, as
`setup` has by then).
"""

import json
import os

import apache_beam as beam
import numpy as np

from kd_keras import filesystems
from kd_keras.cli import quiet_tensorflow
from kd_keras.data import read_lines
from kd_keras.label_shards import save_shard
from kd_keras.storage import file_sha256, write_json_atomic

__all__ = ["LabelShard", "entry_path", "read_rows", "recorded_entry"]


def entry_path(work, index):
    """Where a worker records shard `index`'s manifest entry, under the work folder."""
    return filesystems.join(work, "entries", f"shard-{index:05d}.json")


def recorded_entry(directory, work, index, key, rows):
    """The entry a Beam worker recorded for shard `index`, if its shard verifies."""
    path = entry_path(work, index)
    try:
        record = json.loads(filesystems.read_text(path))
        entry = record["entry"]
        if record["key"] == key and entry["rows"] == rows:
            shard = filesystems.join(directory, entry["file"])
            if filesystems.is_file(shard) and file_sha256(shard) == entry["sha256"]:
                return entry
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def read_rows(segments):
    """The sentences of `(file, skip, take)` parts: stripped non-blank lines, as `iter_corpus`."""
    sentences = []
    for path, skip, take in segments:
        seen = 0
        for _, line in read_lines(path):
            text = line.strip()
            if not text:
                continue
            if seen >= skip:
                sentences.append(text)
                if seen + 1 == skip + take:
                    break
            seen += 1
    return sentences


class LabelShard(beam.DoFn):
    """Labels one shard `(index, start, segments)` with the exported teacher; yields its entry.

    The SavedModel is loaded once per worker, in `setup`. A shard whose record
    and file verify (a retried bundle) is not labeled again.
    """

    def __init__(self, export_path, output_dir, work_dir, key, store, batch_size, precision):
        self.export_path = export_path
        self.output_dir = output_dir
        self.work_dir = work_dir
        self.key = key
        self.store = store
        self.batch_size = int(batch_size)
        self.precision = precision
        self._embed = None

    def setup(self):
        if os.environ.get("KD_KERAS_VERBOSE", "") in ("", "0"):
            quiet_tensorflow()  # no TensorFlow start-up lines from every worker
        # TensorFlow loads here, after quiet_tensorflow (see the module's docstring).
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

        if self.precision == "bfloat16":  # this worker process labels, and only that
            tf.config.optimizer.set_experimental_options(
                {"auto_mixed_precision_onednn_bfloat16": True}
            )
        self._model = tf.saved_model.load(self.export_path)
        signature = self._model.signatures["embed"]
        self._embed = lambda batch: signature(sentences=tf.constant(batch))["embedding"].numpy()

    def _embeddings(self, sentences):
        # Batches of sentences of similar length (characters: a proxy for tokens),
        # each padded by the SavedModel to its own longest row.
        order = np.argsort([len(s) for s in sentences], kind="stable")
        result = None
        for begin in range(0, len(order), self.batch_size):
            rows = order[begin : begin + self.batch_size]
            out = self._embed([sentences[i] for i in rows])
            if result is None:
                result = np.empty((len(sentences), out.shape[-1]), np.float32)
            result[rows] = out
        return result

    def process(self, element):
        index, start, segments = element
        directory = filesystems.to_path(self.output_dir)
        sentences = read_rows(segments)
        rows = [start, start + len(sentences)]
        entry = recorded_entry(directory, self.work_dir, index, self.key, rows)
        if entry is None:
            embeddings = self._embeddings(sentences)
            entry = save_shard(directory, index, start, sentences, embeddings, self.store)
            path = entry_path(self.work_dir, index)
            filesystems.makedirs(filesystems.parent(path))
            write_json_atomic(path, {"key": self.key, "entry": entry})
        yield entry
