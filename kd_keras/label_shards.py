"""The shard files of a labels folder: one shard's sentences and embeddings on disk.

`save_shard` writes `shard-NNNNN.npz` atomically (a `kd_keras.storage` cache
file: the sentences as UTF-8 bytes and offsets, the embeddings in the store
dtype, with a checksum) and returns its manifest entry; `read_shard` reads
one back, verified. The folder and its manifest are `kd_keras.labels`'.
NumPy only, no TensorFlow: the Apache Beam workers write their shards with it
before they load TensorFlow (`kd_keras.labels_beam_worker`). The folder may be
local or on an object store (`gs://...`: `kd_keras.filesystems`).
"""

import numpy as np

from kd_keras import filesystems
from kd_keras.storage import CacheError, file_sha256, read_arrays, write_arrays

__all__ = ["STORES", "read_shard", "save_shard"]

STORES = ("float32", "float16")


def save_shard(directory, index, start, sentences, embeddings, store):
    """Writes shard `index` (rows `start`...) atomically; returns its manifest entry."""
    embeddings = np.asarray(embeddings).astype(store)
    name = f"shard-{index:05d}.npz"
    rows = [start, start + len(sentences)]
    path = filesystems.join(directory, name)
    write_arrays(path, {**_encode(sentences), "embeddings": embeddings}, {"rows": rows})
    return {
        "file": name,
        "rows": rows,
        "dim": int(embeddings.shape[-1]),
        "sha256": file_sha256(path),
    }


def _encode(sentences):
    """Sentences as UTF-8 bytes and offsets (a fixed-width string array would pad
    every row to the longest sentence)."""
    encoded = [s.encode("utf-8") for s in sentences]
    offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
    return {"text": np.frombuffer(b"".join(encoded), dtype=np.uint8), "offsets": offsets}


def _decode(text, offsets):
    data = text.tobytes()
    return [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def read_shard(output_dir, entry):
    """`(sentences, float32 embeddings)` of one manifest entry, verified by checksum.

    Raises:
        CacheError: the shard is missing or fails its checksum.
    """
    path = filesystems.join(output_dir, entry["file"])
    if not filesystems.is_file(path) or file_sha256(path) != entry["sha256"]:
        raise CacheError(f"{path} is missing or fails its checksum. Label the folder again.")
    _, arrays = read_arrays(path)
    return _decode(arrays["text"], arrays["offsets"]), arrays["embeddings"].astype(np.float32)
