"""Reads PyTorch `pytorch_model.bin` state dicts safely, without torch.

A PyTorch checkpoint is a pickle, and unpickling runs whatever callables the
file names. `read_pytorch_bin` unpickles with a restricted `find_class` that
resolves only the tensor-rebuild functions, `collections.OrderedDict` and the
storage types, to stand-ins defined here; any other name in the pickle is
refused (`UnsafeCheckpointError`) before anything is called. Storages become
NumPy arrays read from the file, and tensors NumPy views of them, copied.

Both formats are read: the zip format of `torch.save` since PyTorch 1.6
(`<top>/data.pkl` + `<top>/data/<key>`) and the legacy one before it (a
sequence of pickles followed by the raw storages).
"""

import _compat_pickle
import collections
import pathlib
import pickle
import struct
import zipfile

import numpy as np

__all__ = ["UnsafeCheckpointError", "read_pytorch_bin"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(ValueError):
    """A checkpoint's pickle names something other than tensor data."""


class _StorageType:
    """Stand-in for a `torch.*Storage` class: its element type only."""

    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = np.dtype(dtype)

    def __setstate__(self, state):
        raise UnsafeCheckpointError(f"a pickle may not set the state of torch.{self.name}.")


# bfloat16 is read as its 16 raw bits and widened to float32 afterwards.
_STORAGE_TYPES = {
    name: _StorageType(name, dtype)
    for name, dtype in {
        "FloatStorage": "<f4",
        "HalfStorage": "<f2",
        "BFloat16Storage": "<u2",
        "DoubleStorage": "<f8",
        "LongStorage": "<i8",
        "IntStorage": "<i4",
        "ShortStorage": "<i2",
        "CharStorage": "i1",
        "ByteStorage": "u1",
        "BoolStorage": "?",
    }.items()
}


class _Storage:
    """A storage's element type, size and (once read) flat NumPy data."""

    __slots__ = ("type", "numel", "array")

    def __init__(self, storage_type, numel):
        self.type = storage_type
        self.numel = numel
        self.array = None

    def __setstate__(self, state):
        raise UnsafeCheckpointError("a pickle may not set the state of a storage.")


class _Tensor:
    """A tensor to be made once every storage is read (legacy files read them last)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def __setstate__(self, state):
        raise UnsafeCheckpointError("a pickle may not set the state of a tensor.")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


_ALLOWED = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": collections.OrderedDict,
    **{f"torch.{name}": storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` names; storages through `load_storage`."""

    def __init__(self, file, path, load_storage=None):
        super().__init__(file)
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module, name):
        # Python 2 names (protocol < 3) as the standard unpickler maps them:
        # `__builtin__.exec` is `builtins.exec`, `commands.x` is `subprocess.x`.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in _ALLOWED:
            return _ALLOWED[qualified]
        raise UnsafeCheckpointError(
            f"{self._path}: the checkpoint's pickle refers to `{qualified}`, which is not "
            "tensor data; refusing to load it (nothing from the file was run)."
        )

    def persistent_load(self, pid):
        if self._load_storage is None or not isinstance(pid, tuple) or not pid:
            raise ValueError(f"unexpected persistent id {pid!r}")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename != "storage" or len(pid) < 5:
            raise ValueError(f"unexpected persistent id {pid!r}")
        storage_type, key, _, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"unexpected storage type {storage_type!r}")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise ValueError(f"invalid storage size {numel!r}")
        return self._load_storage(storage_type, str(key), numel, pid[5:])


def _load_pickle(file, path, load_storage=None):
    try:
        return _RestrictedUnpickler(file, path, load_storage).load()
    except UnsafeCheckpointError as e:
        if str(e).startswith(f"{path}:"):
            raise
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        TypeError,
        ValueError,
        AttributeError,
        KeyError,
        IndexError,
    ) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e}).") from None


# === The two file formats ===


def _read_zip(path):
    """The unpickled object of a zip-format checkpoint, its storages read."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a PyTorch zip checkpoint (no single <top>/data.pkl).")
        top = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if top + "byteorder" in names:
            byteorder = archive.read(top + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise ValueError(f"{path}: unknown byte order {byteorder!r}.")
        storages = {}

        def load_storage(storage_type, key, numel, rest):
            if key not in storages:
                entry = f"{top}data/{key}"
                if entry not in names:
                    raise ValueError(f"missing storage entry {entry!r}")
                dtype = storage_type.dtype
                if byteorder == "big":
                    dtype = dtype.newbyteorder(">")
                data = archive.read(entry)
                if len(data) < numel * dtype.itemsize:
                    raise ValueError(f"storage {entry!r} is shorter than its {numel} elements")
                storage = _Storage(storage_type, numel)
                storage.array = np.frombuffer(data, dtype, count=numel).astype(
                    storage_type.dtype.newbyteorder("=")
                )
                storages[key] = storage
            return storages[key]

        with archive.open(pickles[0]) as file:
            return _load_pickle(file, path, load_storage)


def _read_legacy(path):
    """The unpickled object of a pre-1.6 (non-zip) checkpoint, its storages read."""
    with open(path, "rb") as file:
        try:
            magic = _load_pickle(file, path)
        except UnsafeCheckpointError:
            raise
        except ValueError:
            magic = None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (neither zip nor legacy format).")
        if _load_pickle(file, path) != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy PyTorch protocol version.")
        sys_info = _load_pickle(file, path)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian legacy PyTorch checkpoints are not supported.")
        storages = {}

        def load_storage(storage_type, key, numel, rest):
            if rest and rest[0] is not None:
                raise ValueError("storage views (PyTorch < 0.4 checkpoints) are not supported")
            return storages.setdefault(key, _Storage(storage_type, numel))

        result = _load_pickle(file, path, load_storage)
        keys = _load_pickle(file, path)
        if not isinstance(keys, list):
            raise ValueError(f"{path}: not a readable PyTorch checkpoint (no storage list).")
        for key in keys:
            storage = storages.get(str(key))
            header = file.read(8)
            if storage is None or len(header) < 8:
                raise ValueError(f"{path}: storage {key!r} is missing or truncated.")
            (numel,) = struct.unpack("<q", header)
            dtype = storage.type.dtype
            data = file.read(numel * dtype.itemsize) if numel == storage.numel else b""
            if numel != storage.numel or len(data) < numel * dtype.itemsize:
                raise ValueError(f"{path}: storage {key!r} is truncated or has the wrong size.")
            storage.array = np.frombuffer(data, dtype).copy()
    return result


# === Tensors ===


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _materialize(tensor, name, path):
    """The NumPy array of a `_Tensor`, after checking it lies inside its storage."""
    storage = tensor.storage
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    valid = (
        isinstance(storage, _Storage)
        and isinstance(storage.array, np.ndarray)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(_is_int(x) for x in (offset, *size, *stride))
    )
    if not valid:
        raise ValueError(f"{path}: tensor {name!r} is malformed.")
    array = storage.array
    if 0 in size:
        result = np.zeros(size, array.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= array.size:
            raise ValueError(f"{path}: tensor {name!r} reaches past the end of its storage.")
        view = np.lib.stride_tricks.as_strided(
            array[offset:],
            shape=size,
            strides=[s * array.itemsize for s in stride],
            writeable=False,
        )
        result = np.ascontiguousarray(view).copy()
    if storage.type.name == "BFloat16Storage":
        result = (result.astype(np.uint32) << 16).view(np.float32)
    return result


def _collect(tree, prefix, path, out):
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, _Tensor):
            out[name] = _materialize(value, name, path)
        elif isinstance(value, dict):
            _collect(value, name + ".", path, out)
    return out


def read_pytorch_bin(path):
    """Reads a PyTorch state dict (`pytorch_model.bin`) without torch.

    Only tensor data is accepted: a pickle that names any other function or
    class (`os.system`, `builtins.exec`, ...) is refused before anything is
    called.

    Args:
        path: a file written by `torch.save(state_dict, path)`, zip or
            legacy format.

    Returns:
        dict `name -> np.ndarray` (C-contiguous; bfloat16 widened to
        float32). Tensors in nested dicts are named `outer.inner`; values
        that are not tensors are left out.

    Raises:
        UnsafeCheckpointError: the pickle refers to anything but tensors.
        ValueError: the file is not a readable PyTorch checkpoint.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Missing file: {path}")
    result = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if not isinstance(result, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(result).__name__}.")
    return _collect(result, "", path, {})
