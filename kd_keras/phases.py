"""Markers of a run's finished phases: a rerun after a kill redoes only what is unfinished.

A recipe's run folder holds, under `phases/`, one JSON marker per finished
phase (`train`, `export`, `evaluate`, `fidelity`): the fingerprint of the
settings it ran with, what the phase computed (its figures, the training
history) and the SHA-256 of every file or folder it wrote. A rerun with the
same settings reuses a phase whose marker is there, whose fingerprint matches
and whose outputs are unchanged on disk; anything else (no marker, another
setting, an output deleted, damaged or replaced) runs the phase again, and
every later phase with it. Markers are written atomically, after the phase's
outputs, so a kill at any instant leaves either no marker or a true one.

Only the standard library is imported here (and `kd_keras.storage`).

Example:

```python
phases = Phases(run_folder, settings)
done = phases.reused("train", ["student.keras"])
if done is None:
    history = train(...)
    phases.mark("train", {"history": history}, ["student.keras"])
else:
    history = done["history"]
```
"""

import hashlib
import json
import pathlib
import shutil

from kd_keras.storage import digest, file_sha256, write_json_atomic

__all__ = ["Phases", "output_digest"]

FORMAT = "kd_keras.phase.v1"


def output_digest(path):
    """SHA-256 of a file, or of a folder (every file's relative path and SHA-256).

    `None` when `path` does not exist.
    """
    path = pathlib.Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _plain(value):
    """NumPy numbers and arrays as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serializable in a phase marker: {type(value).__name__}")


class Phases:
    """The phase markers of one run folder.

    Args:
        folder: the run folder (markers go to `folder/phases/`).
        settings: JSON-serializable settings of the run; their digest is
            every marker's fingerprint.
        log: callable taking a line, told which phases are reused (or `None`).
    """

    def __init__(self, folder, settings, log=None):
        self.folder = pathlib.Path(folder)
        self.markers = self.folder / "phases"
        self.fingerprint = digest(json.dumps(settings, sort_keys=True, default=str))
        self.log = log
        self.broken = False  # a phase ran again: every later one runs again too

    def _path(self, name):
        return self.markers / f"{name}.json"

    def reused(self, name, outputs=()):
        """The value `mark` stored for `name`, or `None` when the phase must run.

        Args:
            name: str. The phase.
            outputs: paths relative to the run folder that the phase wrote.
        """
        if self.broken:
            return None
        try:
            marker = json.loads(self._path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            marker = None
        if (
            not isinstance(marker, dict)
            or marker.get("format") != FORMAT
            or marker.get("fingerprint") != self.fingerprint
            or sorted(marker.get("outputs", {})) != sorted(map(str, outputs))
            or any(output_digest(self.folder / p) != sha for p, sha in marker["outputs"].items())
        ):
            self.broken = True
            return None
        if self.log is not None:
            self.log(
                f"{name}: reused from an earlier run of the same settings ({self._path(name)})"
            )
        return marker["value"]

    def mark(self, name, value, outputs=()):
        """Records phase `name` as finished with `value` and its `outputs`.

        Returns `value` as a later `reused` gives it back (through JSON: tuples
        become lists, NumPy numbers plain ones), so that a fresh run and a
        resumed one carry on with the same values.
        """
        value = json.loads(json.dumps(value, default=_plain))
        self.markers.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self._path(name),
            {
                "format": FORMAT,
                "fingerprint": self.fingerprint,
                "outputs": {str(p): output_digest(self.folder / p) for p in outputs},
                "value": value,
            },
            indent=None,
        )
        return value

    def clear(self):
        """Forgets every phase (`--overwrite`)."""
        shutil.rmtree(self.markers, ignore_errors=True)
        self.broken = True
