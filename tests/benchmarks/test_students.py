"""benchmarks/students.py: its table and plot from given rows, and its argument checks."""

import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "students.py"


@pytest.fixture(scope="module")
def students():
    spec = importlib.util.spec_from_file_location("students_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROWS = [
    dict(
        model="teacher",
        test_spearman=82.0,
        dev_spearman=86.7,
        sentences_per_second=220.0,
        p50_ms=9.5,
        size_mib=89.6,
        speedup=1.0,
    ),
    dict(
        model="static",
        test_spearman=74.1,
        dev_spearman=80.2,
        sentences_per_second=40000.0,
        p50_ms=0.4,
        size_mib=30.1,
        speedup=181.8,
    ),
    dict(
        model="static-int8",
        test_spearman=74.0,
        dev_spearman=80.1,
        sentences_per_second=39000.0,
        p50_ms=0.4,
        size_mib=8.3,
        speedup=177.3,
        weights="int8",
    ),
]


def test_table_and_plot(students, tmp_path, capsys):
    students.print_table(ROWS)
    out = capsys.readouterr().out
    assert "static" in out and "181.8" in out and "74.10" in out
    assert out.splitlines()[-2].endswith("float32") and out.splitlines()[-1].endswith("int8")
    students.plot(ROWS, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_that_is_not_a_saved_model_is_refused(students, tmp_path):
    with pytest.raises(SystemExit, match="expected NAME=FOLDER"):
        students.main(["--model", f"teacher={tmp_path}"])
    with pytest.raises(SystemExit, match="expected NAME=FOLDER"):
        students.main(["--model", "no-equals-sign"])


def test_int8_exports_are_made_from_a_student_file(students, tmp_path, tiny_vocabulary):
    import keras

    from kd_keras import serving
    from kd_keras.models.bert_tokenizer import BertPreprocessor
    from kd_keras.models.static import build_static_encoder

    keras.utils.set_random_seed(0)
    student = build_static_encoder(len(tiny_vocabulary), embedding_dim=4, output_dim=4)
    preprocessor = BertPreprocessor(tiny_vocabulary, sequence_length=16)
    path, _ = serving.save_student(student, tmp_path / "static.keras", preprocessor)
    made = students.int8_exports([f"static-int8={path}"], tmp_path / "work")
    assert made == [("static-int8", tmp_path / "work" / "static-int8")]
    assert students._precision(made[0][1]) == "int8"
    with pytest.raises(SystemExit, match="neither a .keras file nor teacher:SPEC"):
        students.int8_exports([f"x={tmp_path / 'nope.keras'}"], tmp_path / "work")
    with pytest.raises(SystemExit, match="expected NAME=SOURCE"):
        students.int8_exports(["no-equals-sign"], tmp_path / "work")


def test_st_onnx_rows_are_checked_before_anything_loads(students, tmp_path):
    assert students.st_onnx_specs(["st=float32", "st-int8=int8"]) == [
        ("st", "float32"),
        ("st-int8", "int8"),
    ]
    for bad in ["st=int4", "no-equals-sign", "=int8"]:
        with pytest.raises(SystemExit, match="expected NAME=PRECISION"):
            students.st_onnx_specs([bad])
    (tmp_path / "saved_model.pb").touch()
    with pytest.raises(SystemExit, match="row names must differ"):
        students.main(["--model", f"st={tmp_path}", "--st-onnx", "st=int8"])


def test_st_onnx_without_the_reference_extra_stops_in_one_line_before_tensorflow(tmp_path):
    import subprocess
    import sys

    (tmp_path / "saved_model.pb").touch()
    # onnxruntime hidden, whether installed or not: `find_spec` finds None.
    code = (
        "import runpy, sys\n"
        "sys.modules['onnxruntime'] = None\n"
        f"sys.argv = ['students.py', '--model', 'teacher={tmp_path}', '--st-onnx', 'st=int8']\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print(e)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    message, tensorflow = done.stdout.splitlines()  # the message is one line
    assert message.startswith("--st-onnx needs the reference extra (") and "onnxruntime" in message
    assert message.endswith(": pip install -e '.[reference]'")
    assert tensorflow == "False"


def test_fidelity_columns_against_the_first_model(students, capsys):
    import numpy as np

    sets = {f"source-{k}": [f"sentence {k} {i}" for i in range(40)] for k in range(3)}
    rng = np.random.default_rng(0)
    table = {s: rng.normal(size=8) for sentences in sets.values() for s in sentences}

    def teacher(batch):
        return np.stack([table[s] for s in batch])

    def student(batch):  # the teacher's, but scrambled on source-1
        vectors = teacher(batch)
        scrambled = [i for i, s in enumerate(batch) if s.startswith("sentence 1 ")]
        vectors[scrambled] = rng.normal(size=(len(scrambled), 8))
        return vectors

    rows = [dict(r) for r in ROWS[:2]]
    students.add_fidelity(rows, [("teacher", teacher), ("student", student)], sets)
    assert rows[0]["fidelity_mean"] == pytest.approx(100.0)
    assert rows[0]["recall_mean"] == pytest.approx(100.0)
    assert rows[1]["worst_source"] == "source-1"
    assert rows[1]["fidelity_worst"] < 50.0
    assert rows[1]["fidelity_mean"] == pytest.approx((200.0 + rows[1]["fidelity_worst"]) / 3)
    students.print_table(rows)
    out = capsys.readouterr().out
    assert "fid. worst" in out and f"{rows[1]['fidelity_worst']:.2f}" in out
