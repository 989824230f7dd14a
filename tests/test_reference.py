"""`kd_keras.reference`: what runs without the reference extra (no torch, no ONNX Runtime)."""

import sys

import pytest

from kd_keras import reference


def test_importing_it_imports_no_reference_package():
    for module in reference.ONNX_PACKAGES:
        if module in sys.modules:  # another test imported it: say which
            pytest.skip(f"{module} already imported")
    assert not set(reference.ONNX_PACKAGES) & set(sys.modules)


def test_the_int8_config_is_sentence_transformers_name_for_the_cpu():
    pick = reference.quantization_config
    assert pick("fpu sse avx2 avx512f avx512bw avx512_vnni", "x86_64") == "avx512_vnni"
    assert pick("avx2 avx512f avx512bw", "x86_64") == "avx512"
    assert pick(["avx2", "avx_vnni"], "x86_64") == "avx2"
    assert pick("", "aarch64") == "arm64"
    with pytest.raises(RuntimeError, match="no AVX2"):
        pick("sse4_2 avx", "x86_64")


def test_missing_packages_are_named_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `find_spec` finds None
    assert "onnxruntime" in reference.missing_packages()
    with pytest.raises(ImportError) as raised:
        reference.require("--st-onnx")
    message = str(raised.value)
    assert "\n" not in message and message.endswith(reference.INSTALL)
    reference.require("numpy", {"numpy": "numpy"})


def test_onnx_files_by_precision(tmp_path):
    assert reference.onnx_file(tmp_path, "float32") == tmp_path / "onnx" / "model.onnx"
    with pytest.raises(FileNotFoundError, match="expected one int8"):
        reference.onnx_file(tmp_path, "int8")
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model_qint8_avx512_vnni.onnx").touch()
    assert reference.onnx_file(tmp_path, "int8").name == "model_qint8_avx512_vnni.onnx"
    with pytest.raises(ValueError, match="precision"):
        reference.onnx_file(tmp_path, "int4")
    spec = reference.onnx_embedder_spec(tmp_path, "int8")
    assert spec == {
        "factory": "kd_keras.reference:onnx_embedder",
        "kwargs": {"directory": str(tmp_path), "precision": "int8"},
    }
