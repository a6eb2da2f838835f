import re
from pathlib import Path

import numpy as np
import pytest

from ghostvlad.data.trials import Trials, TrialsError, read_trials

META = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "voxceleb_meta"
needs_meta = pytest.mark.skipif(not META.is_dir(), reason=f"shared VoxCeleb trial lists not found at {META}")


@needs_meta
def test_voxceleb1_o():
    trials = read_trials(META / "voxceleb1_veri_test.txt")
    assert len(trials) == 37720 and int(trials.labels.sum()) == 18860
    assert trials.labels.dtype == np.int8
    assert len(trials.files()) == 4715
    assert (trials.labels[0], trials.enroll[0], trials.test[0]) == (
        1, "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav")


@needs_meta
def test_voxceleb1_o_cleaned_without_trailing_newline():
    path = META / "voxceleb1_veri_test_fixed.txt"
    assert not path.read_bytes().endswith(b"\n")
    trials = read_trials(path)
    assert len(trials) == 37611 and int(trials.labels.sum()) == 18802
    assert len(trials.files()) == 4708


def test_formats_crlf_blank_lines_no_final_newline(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(
        b"1 a/1.wav b/2.wav\r\n\r\n  \r\n0\tb/2.wav   c/3.wav\r\nc/3.wav a/1.wav target\nd/4.wav a/1.wav nontarget"
    )
    trials = read_trials(path)
    assert trials.labels.tolist() == [1, 0, 1, 0]
    assert trials.enroll == ["a/1.wav", "b/2.wav", "c/3.wav", "d/4.wav"]
    assert trials.test == ["b/2.wav", "c/3.wav", "a/1.wav", "a/1.wav"]
    assert trials.files() == ["a/1.wav", "b/2.wav", "c/3.wav", "d/4.wav"]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("1 a.wav b.wav\n\n1 a.wav\n", 3, "expected 3 fields.*got 2"),
        ("1 a.wav b.wav\n1 a.wav b.wav c.wav\n", 2, "expected 3 fields.*got 4"),
        ("1 a.wav b.wav\n2 a.wav b.wav\n", 2, "no label 0/1 first or target/nontarget last"),
        ("a.wav b.wav yes\n", 1, "no label"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, text, line, reason):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(TrialsError, match=f"^{re.escape(str(path))}:{line}: {reason}"):
        read_trials(path)


def test_missing_and_empty(tmp_path):
    with pytest.raises(TrialsError, match="nope.txt: trial list not found"):
        read_trials(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(TrialsError, match="empty.txt: trial list has no trials"):
        read_trials(tmp_path / "empty.txt")
    assert issubclass(TrialsError, ValueError)


def test_trials_columns_must_align():
    with pytest.raises(ValueError, match="differ in length"):
        Trials(np.array([1], dtype=np.int8), ["a"], [])
