"""Parts of the sentence-pair report: the training-data mix and the stored size sweep."""

import json

from kd_keras.recipes.sentence_pairs import report


def sweep_rows(student="bilstm"):
    config = {"teacher": "default", "student": student, "objective": "embedding"}
    return [
        {
            "unlabeled_limit": n,
            "transfer_sentences": 2 * n + 100,
            "student_dev_spearman": 80.0 + k,
            "teacher_dev_spearman": 86.5,
            "config": config,
        }
        for k, n in enumerate((1000, 2000, 4000, 8000))
    ]


def test_size_curve_section_shows_the_stored_sweep_of_the_same_setup(tmp_path):
    curve = tmp_path / "transfer_size.json"
    curve.write_text(json.dumps({"command": "python sweep", "machine": "M", "rows": sweep_rows()}))
    c = {"teacher": "default", "student": "bilstm", "objective": "embedding"}
    text = report._size_curve_section(tmp_path, c, curve)
    assert "| 4,000 | 8,100 | 82.00 |" in text
    assert "`python sweep` on M" in text
    assert (tmp_path / "transfer_size.png").stat().st_size > 0
    # Another student, a missing or broken file: no section.
    assert report._size_curve_section(tmp_path, {**c, "student": "static"}, curve) == ""
    assert report._size_curve_section(tmp_path, c, tmp_path / "missing.json") == ""
    curve.write_text("{not json")
    assert report._size_curve_section(tmp_path, c, curve) == ""


def test_mix_text_lists_every_source_largest_first():
    c = {"train": "sts-train.csv", "augment": 1}
    d = {"labeled_pairs": 5749, "unlabeled_mix": {"a.txt.gz": 100, "b.txt.gz": 300}}
    text = report._mix_text(c, d)
    assert text.startswith("Training-data mix: 5,749 gold pairs from `sts-train.csv`")
    assert "400 unlabeled sentences: `b.txt.gz` 300 (75%), `a.txt.gz` 100 (25%)" in text
    no_unlabeled = report._mix_text(c, {"labeled_pairs": 3, "unlabeled_mix": {}})
    assert "unlabeled" not in no_unlabeled
