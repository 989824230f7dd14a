"""PyTorch-only HF checkpoints without torch: `read_pytorch_bin`, `tokenizer.json` vocabularies.

The `.bin` files are written here by hand, as `torch.save` writes them (a zip of
`<top>/data.pkl` and `<top>/data/<key>`, or the legacy pickle sequence), through a
pickler that names stand-in `torch` modules present only while pickling.
"""

import collections
import contextlib
import io
import json
import pickle
import pickletools
import sys
import types
import zipfile

import numpy as np
import pytest

from kd_keras.models.bert_encoder import get_google_weights
from kd_keras.models.bert_tokenizer import load_tokenizer_json_vocabulary
from kd_keras.models.google_bert import encoder_from_bert_config
from kd_keras.models.teachers import load_teacher
from kd_keras.models.torch_checkpoint import UnsafeCheckpointError, read_pytorch_bin
from kd_keras.teacher_pass import run_teacher

_STORAGE_NAMES = {
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "float64": "DoubleStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "uint16": "BFloat16Storage",  # arrays of raw bfloat16 bits
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}

# === A torch-free writer of `torch.save` files ===


def _rebuild_tensor_v2(*args):  # pickled by name only; never called
    raise AssertionError("the stand-in is never called")


_rebuild_tensor_v2.__module__ = "torch._utils"


@contextlib.contextmanager
def fake_torch():
    """Stand-in `torch` and `torch._utils` modules in `sys.modules`, removed afterwards."""
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    torch = types.ModuleType("torch")
    torch._utils = types.ModuleType("torch._utils")
    torch._utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in _STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    sys.modules.update({"torch": torch, "torch._utils": torch._utils})
    try:
        yield torch
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Storage:
    def __init__(self, key, array, legacy=False):
        self.key, self.array, self.legacy = key, np.ravel(array), legacy


class Tensor:
    """A tensor over `storage`: pickles as `torch._utils._rebuild_tensor_v2(...)`."""

    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride))

    def __reduce__(self):
        args = (*self.args, False, collections.OrderedDict())
        return sys.modules["torch._utils"]._rebuild_tensor_v2, args


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        storage_type = getattr(sys.modules["torch"], _STORAGE_NAMES[obj.array.dtype.name])
        pid = ("storage", storage_type, obj.key, "cpu", obj.array.size)
        return (*pid, None) if obj.legacy else pid


def as_state_dict(arrays, legacy=False):
    """`name -> Tensor` over one storage per (C-contiguous) array, and the storages."""
    state, storages = collections.OrderedDict(), []
    for i, (name, array) in enumerate(arrays.items()):
        storage = Storage(str(i), np.ascontiguousarray(array), legacy)
        strides = [s // array.itemsize for s in storage.array.reshape(array.shape).strides]
        state[name] = Tensor(storage, 0, array.shape, strides)
        storages.append(storage)
    return state, storages


def dumps(obj):
    with fake_torch():
        buffer = io.BytesIO()
        TorchPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def little_endian(array):
    return np.asarray(array).astype(np.asarray(array).dtype.newbyteorder("<")).tobytes()


def write_zip(path, data_pkl, storages, top="archive"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/data.pkl", data_pkl)
        archive.writestr(f"{top}/byteorder", "little")
        for storage in storages:
            archive.writestr(f"{top}/data/{storage.key}", little_endian(storage.array))
        archive.writestr(f"{top}/version", "3\n")
    return path


def write_legacy(path, state, storages):
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 8}}
    parts = [pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, sys_info)]
    parts += [dumps(state), pickle.dumps([s.key for s in storages], protocol=2)]
    for storage in storages:
        parts += [little_endian(np.int64(storage.array.size)), little_endian(storage.array)]
    path.write_bytes(b"".join(parts))
    return path


# === read_pytorch_bin ===


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.normal(size=(3, 4)).astype("float32"),
        "a.half": rng.normal(size=(2, 5)).astype("float16"),
        "ids": np.arange(-3, 9, dtype="int64").reshape(3, 4),
        "short": np.array([-7, 300], "int16"),
        "bytes": np.array([[0, 255]], "uint8"),
        "flags": np.array([True, False, True]),
        "scalar": np.array(2.5, "float64"),
    }


def test_zip_tensors_round_trip_exactly(tmp_path):
    arrays = sample_arrays()
    state, storages = as_state_dict(arrays)
    # A transposed view sharing `a.weight`'s storage, and one at an offset.
    state["a.weight_t"] = Tensor(storages[0], 0, (4, 3), (1, 4))
    state["a.row_1"] = Tensor(storages[0], 4, (4,), (1,))
    state["nested"] = {"bias": Tensor(storages[1], 1, (3,), (2,))}
    state["step"] = 7  # not a tensor: left out
    path = write_zip(tmp_path / "pytorch_model.bin", dumps(state), storages, top="my_model")
    assert "torch" not in sys.modules or hasattr(sys.modules["torch"], "Tensor")  # stand-in gone
    out = read_pytorch_bin(path)
    expected = dict(
        arrays,
        **{
            "a.weight_t": arrays["a.weight"].T,
            "a.row_1": arrays["a.weight"][1],
            "nested.bias": arrays["a.half"].ravel()[1:7:2],
        },
    )
    assert sorted(out) == sorted(expected)
    for name, value in expected.items():
        assert out[name].dtype == value.dtype, name
        assert out[name].flags.c_contiguous, name
        np.testing.assert_array_equal(out[name], value, err_msg=name)


def test_legacy_format_round_trips(tmp_path):
    arrays = sample_arrays()
    state, storages = as_state_dict(arrays, legacy=True)
    out = read_pytorch_bin(write_legacy(tmp_path / "legacy.bin", state, storages))
    assert sorted(out) == sorted(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(out[name], value, err_msg=name)


def test_bfloat16_storages_widen_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], "float32")
    bits = (values.view("uint32") >> 16).astype("uint16")  # bfloat16 = top 16 bits
    storage = Storage("0", bits)
    state = {"b": Tensor(storage, 0, (4,), (1,))}
    out = read_pytorch_bin(write_zip(tmp_path / "bf16.bin", dumps(state), [storage]))
    assert out["b"].dtype == np.float32
    np.testing.assert_array_equal(out["b"], (bits.astype("uint32") << 16).view("float32"))
    np.testing.assert_allclose(out["b"], values, rtol=1e-2)


def test_tensor_outside_its_storage_is_refused(tmp_path):
    storage = Storage("0", np.zeros(6, "float32"))
    state = {"w": Tensor(storage, 2, (2, 3), (3, 1))}  # needs 8 elements
    path = write_zip(tmp_path / "bad.bin", dumps(state), [storage])
    with pytest.raises(ValueError, match="'w' reaches past the end of its storage"):
        read_pytorch_bin(path)


# === Malicious pickles ===


def test_os_system_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    assert [op.name for op, _, _ in pickletools.genops(payload)][:2] == ["GLOBAL", "MARK"]
    path = write_zip(tmp_path / "pytorch_model.bin", payload, [])
    with pytest.raises(UnsafeCheckpointError, match=r"pytorch_model\.bin.*`os\.system`"):
        read_pytorch_bin(path)
    assert not marker.exists()

    # Through `load_teacher` too: the folder is refused, nothing runs.
    folder = tmp_path / "hf"
    folder.mkdir()
    path.rename(folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        load_teacher(str(folder))
    assert not marker.exists()


class Exploit:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_callables_hidden_among_tensors_are_refused(tmp_path):
    import subprocess

    marker = tmp_path / "pwned"
    state, storages = as_state_dict(sample_arrays())
    state["evil"] = Exploit(subprocess.check_call, ["touch", str(marker)])
    path = write_zip(tmp_path / "a.bin", dumps(state), storages)
    with pytest.raises(UnsafeCheckpointError, match="subprocess.check_call"):
        read_pytorch_bin(path)

    code = f"open({str(marker)!r}, 'w').close()"
    state, storages = as_state_dict(sample_arrays(), legacy=True)
    state["evil"] = Exploit(exec, code)
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        read_pytorch_bin(write_legacy(tmp_path / "b.bin", state, storages))
    # The legacy header pickles are unpickled under the same rules.
    legacy = tmp_path / "c.bin"
    legacy.write_bytes(pickle.dumps(Exploit(exec, code), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        read_pytorch_bin(legacy)
    assert not marker.exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        read_pytorch_bin(path)


# === HF folders with only pytorch_model.bin / tokenizer.json ===

TINY_CONFIG = {
    "model_type": "bert",
    "vocab_size": 31,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


def tokenizer_json(vocabulary, lowercase=True, strip_accents=None, shuffle=True):
    vocab = {token: i for i, token in enumerate(vocabulary)}
    if shuffle:  # JSON order is not id order
        vocab = dict(sorted(vocab.items(), key=lambda item: -item[1]))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": strip_accents,
            "lowercase": lowercase,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": vocab,
        },
    }


def test_pytorch_bin_folder_matches_safetensors_folder(
    tmp_path, make_bert_encoder, tiny_vocabulary, hf_tensors
):
    from safetensors.numpy import save_file

    tensors = hf_tensors(get_google_weights(make_bert_encoder(seed=4, spread=0.2)))
    config = json.dumps(TINY_CONFIG)
    st_dir, bin_dir = tmp_path / "safetensors", tmp_path / "bin"
    for folder in (st_dir, bin_dir):
        folder.mkdir()
        (folder / "config.json").write_text(config, encoding="utf-8")
    save_file(tensors, str(st_dir / "model.safetensors"))
    (st_dir / "vocab.txt").write_text("\n".join(tiny_vocabulary) + "\n", encoding="utf-8")
    state, storages = as_state_dict(tensors)
    write_zip(bin_dir / "pytorch_model.bin", dumps(state), storages, top="pytorch_model")
    tokenizer = json.dumps(tokenizer_json(tiny_vocabulary))
    (bin_dir / "tokenizer.json").write_text(tokenizer, encoding="utf-8")

    reference, teacher = load_teacher(str(st_dir)), load_teacher(str(bin_dir))
    assert teacher.preprocessor.vocabulary == tiny_vocabulary
    texts = ["the cat sat on the mat", "a dog", "quick brown fox jumps"]
    expected = run_teacher(reference, texts)
    assert np.ptp(expected, axis=0).max() > 1e-3  # the texts embed differently
    np.testing.assert_allclose(run_teacher(teacher, texts), expected, atol=1e-6)


CHINESE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    *"一架飞机我的!，。",
    "cafe",
    "café",
    "Cafe",
    "Café",
    "CAFÉ",
    "a",
    "##b",
]
CHINESE_TEXTS = ["我的飞机!", "Café 一架飞机。", "CAFÉ cafe", "ab飞机，Cafe", "Ｃafé"]


def test_tokenizer_json_vocabulary_and_settings(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tokenizer_json(CHINESE_VOCAB)), encoding="utf-8")
    assert load_tokenizer_json_vocabulary(path) == CHINESE_VOCAB

    gap = tokenizer_json(CHINESE_VOCAB)
    del gap["model"]["vocab"]["机"]
    path.write_text(json.dumps(gap), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json: vocabulary ids are not contiguous"):
        load_tokenizer_json_vocabulary(path)
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}), encoding="utf-8")
    with pytest.raises(ValueError, match="expected a WordPiece model"):
        load_tokenizer_json_vocabulary(path)


@pytest.mark.parametrize("lowercase, strip_accents", [(False, True), (True, False)])
def test_tokenizer_json_folder_tokenizes_chinese_as_bert(
    tmp_path, lowercase, strip_accents, hf_tensors
):
    folder = tmp_path / "zh"
    folder.mkdir()
    tokenizer = tokenizer_json(CHINESE_VOCAB, lowercase=lowercase, strip_accents=strip_accents)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    config = dict(TINY_CONFIG, vocab_size=len(CHINESE_VOCAB))
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    state, storages = as_state_dict(
        hf_tensors(get_google_weights(encoder_from_bert_config(config)))
    )
    write_zip(folder / "pytorch_model.bin", dumps(state), storages)
    preprocessor = load_teacher(str(folder)).preprocessor
    assert (preprocessor.lowercase, preprocessor.strip_accents) == (lowercase, strip_accents)
    ids = preprocessor.tokenize(CHINESE_TEXTS).to_list()
    vocab = {t: i for i, t in enumerate(CHINESE_VOCAB)}
    assert ids[0] == [vocab[c] for c in "我的飞机!"]  # one token per CJK character
    cafe = "Cafe" if not lowercase else "café"
    assert ids[1] == [vocab[cafe]] + [vocab[c] for c in "一架飞机。"]
    try:
        import tokenizers
    except ImportError:
        return
    hf = tokenizers.Tokenizer.from_str(json.dumps(tokenizer))
    assert ids == [hf.encode(text, add_special_tokens=False).ids for text in CHINESE_TEXTS]


# === Optional: files written by real torch ===


def test_real_torch_save_files(tmp_path):
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    state = collections.OrderedDict(
        w=torch.randn(4, 3, generator=generator),
        h=torch.randn(5, generator=generator).half(),
        b=torch.randn(6, generator=generator).bfloat16(),
        i=torch.arange(7),
    )
    state["w_t"] = state["w"].t()
    state["p"] = torch.nn.Parameter(torch.ones(2))
    for legacy in (False, True):
        path = tmp_path / f"model_{legacy}.bin"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        out = read_pytorch_bin(path)
        assert sorted(out) == sorted(state)
        for name, tensor in state.items():
            expected = tensor.detach().float() if name == "b" else tensor.detach()
            np.testing.assert_array_equal(out[name], expected.numpy(), err_msg=name)
