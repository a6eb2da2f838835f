import csv
import re
from pathlib import Path

import numpy as np
import pytest
from support.manifest import GOOD, tree  # noqa: F401  (fixtures)

from ghostvlad.data.manifest import (
    Manifest,
    ManifestError,
    bad_report_path,
    build_manifest,
    read_manifest,
    read_original_list,
    scan_voxceleb,
    speaker_of,
)


def test_scan_finds_exactly_the_layout(tree):
    root, bad = tree
    files = scan_voxceleb(root)
    expected = sorted([root / s / v / f for s, v, f, _ in GOOD] + list(bad.values()))
    assert files == expected
    assert all(f.is_absolute() for f in files)
    assert [speaker_of(f, root) for f in files] == [f.relative_to(root).parts[0] for f in expected]


def test_scan_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        scan_voxceleb(tmp_path / "nope")


def test_build_manifest_reports_and_skips_bad_files(tree, tmp_path):
    root, bad = tree
    files = scan_voxceleb(root)
    out = tmp_path / "data" / "vox2_dev.csv"
    calls = []
    report = build_manifest(files, [speaker_of(f, root) for f in files], out, workers=2,
                            on_progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (len(files), len(files))  # progress reported through the callback
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert report.manifest == out and report.n_ok == len(GOOD)
    assert report.bad_report == tmp_path / "data" / "vox2_dev.bad.txt"
    reasons = dict(report.bad)
    assert set(reasons) == {str(p) for p in bad.values()}
    assert "truncated" in reasons[str(bad["truncated"])]
    assert "cannot decode" in reasons[str(bad["not_audio"])]
    assert "empty file" in reasons[str(bad["empty"])]
    lines = report.bad_report.read_text().splitlines()
    assert sorted(lines) == sorted(f"{p}: {r}" for p, r in report.bad)

    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "speaker", "duration"]
    expected = {str(root / s / v / f): (s, n) for s, v, f, n in GOOD}
    assert {r[0] for r in rows[1:]} == set(expected)
    for path, speaker, duration in rows[1:]:
        assert Path(path).is_absolute()
        assert speaker == expected[path][0]
        if not path.endswith(".m4a"):  # AAC adds encoder delay/padding; wav/flac durations are exact
            assert float(duration) == expected[path][1] / 16000
    m4a = next(r for r in rows[1:] if r[0].endswith(".m4a"))
    assert 2.0 <= float(m4a[2]) < 2.2  # the AAC encoder pads up to whole 1024-sample frames

    manifest = read_manifest(out)
    assert len(manifest) == len(GOOD)
    assert manifest.paths == [r[0] for r in rows[1:]]
    assert manifest.durations.dtype == np.float32
    assert np.array_equal(manifest.durations, np.array([float(r[2]) for r in rows[1:]], np.float32))


def test_rerun_is_safe_and_removes_a_stale_report(tree, tmp_path):
    root, bad = tree
    files = scan_voxceleb(root)
    out = tmp_path / "m.csv"
    build_manifest(files, [speaker_of(f, root) for f in files], out, workers=1)
    first = out.read_text()
    assert bad_report_path(out).exists()
    for p in bad.values():
        p.unlink()
    files = scan_voxceleb(root)
    report = build_manifest(files, [speaker_of(f, root) for f in files], out, workers=1)
    assert report.bad == [] and not bad_report_path(out).exists()
    assert out.read_text() == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_build_manifest_length_mismatch(tmp_path):
    with pytest.raises(ValueError, match="2 files but 1 speakers"):
        build_manifest(["a.wav", "b.wav"], ["x"], tmp_path / "m.csv")


def test_manifest_labels_are_ranks_of_sorted_speakers():
    speakers = ["id00012", "id00003", "id10270", "id00003", "id00012"]
    m = Manifest([f"/a/{i}.wav" for i in range(5)], speakers, np.ones(5, np.float32))
    ids = sorted(set(speakers))
    assert m.speaker_ids() == ids
    assert m.labels().dtype == np.int64
    assert m.labels().tolist() == [ids.index(s) for s in speakers]
    with pytest.raises(ValueError, match="2 paths, 1 speakers, 2 durations"):
        Manifest(["a", "b"], ["x"], np.ones(2, np.float32))


def test_original_list_format(tmp_path):
    lst = tmp_path / "voxlb2_train.txt"
    lst.write_text("id00012/UiPa-HfABJQ/00090.wav 0\n\nid00015/abc/00001.wav 1\r\nid00015/abc/00002.wav 1")
    files, speakers = read_original_list(lst, tmp_path / "root")
    root = (tmp_path / "root").absolute()
    assert files == [root / "id00012/UiPa-HfABJQ/00090.wav", root / "id00015/abc/00001.wav",
                     root / "id00015/abc/00002.wav"]
    assert speakers == ["id00012", "id00015", "id00015"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id1/v/1.wav 0\nid1/v/2.wav x\n", r":2: label 'x' is not an integer"),
        ("id1/v/1.wav 0 extra\n", r":1: expected '<relative path> <label>', got 3 fields"),
        ("/abs/id1/v/1.wav 0\n", r":1: '/abs/id1/v/1.wav' is not a relative"),
        ("file.wav 0\n", r":1: 'file.wav' is not a relative"),
        ("\n\n", r": no entries"),
    ],
)
def test_original_list_errors(tmp_path, text, message):
    lst = tmp_path / "list.txt"
    lst.write_text(text)
    with pytest.raises(ManifestError, match=f"^{re.escape(str(lst))}{message}"):
        read_original_list(lst, tmp_path)


def test_read_manifest_relative_paths_and_quoting(tmp_path):
    path = tmp_path / "sub" / "m.csv"
    path.parent.mkdir()
    path.write_text('path,speaker,duration\nid1/v/1.wav,id1,2.5\n"/abs/with,comma.wav",id2,3\n')
    m = read_manifest(path)
    assert m.paths == [str(path.parent.absolute() / "id1/v/1.wav"), "/abs/with,comma.wav"]
    assert m.speakers == ["id1", "id2"]
    assert m.durations.tolist() == [2.5, 3.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,speaker,duration\na,b,1\n",
         r": expected the header 'path,speaker,duration', got 'file,speaker,duration'"),
        ("", r": expected the header"),
        ("path,speaker,duration\na,b,1\nc,d\n", r":3: expected 3 fields \(path,speaker,duration\), got 2"),
        ("path,speaker,duration\na,b,1\nc,d,long\n", r":3: duration 'long' is not a number"),
        ("path,speaker,duration\na,b,-1\n", r":2: duration '-1' must be a positive number"),
        ("path,speaker,duration\na,b,nan\n", r":2: duration 'nan' must be a positive number"),
        ("path,speaker,duration\na,,1\n", r":2: empty speaker"),
        ("path,speaker,duration\n", r": no utterances"),
    ],
)
def test_read_manifest_errors(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=f"^{re.escape(str(path))}{message}"):
        read_manifest(path)


def test_read_manifest_missing(tmp_path):
    with pytest.raises(ManifestError, match=f"^{re.escape(str(tmp_path / 'x.csv'))}: no such file$"):
        read_manifest(tmp_path / "x.csv")


# ------------------------------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("workers", [1, 2])
def test_build_manifest_reports_progress_through_the_callback(tree, tmp_path, monkeypatch, workers):
    monkeypatch.setattr("ghostvlad.data.manifest._CHUNK", 3)  # several chunks, so several reports
    root, _ = tree
    files = scan_voxceleb(root)
    calls = []
    build_manifest(files, [speaker_of(f, root) for f in files], tmp_path / "m.csv", workers=workers,
                   on_progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert calls[0] == (0, len(files)) and calls[-1] == (len(files), len(files))
    assert {t for _, t in calls} == {len(files)} and done == sorted(done)
    assert len(calls) == 1 + -(-len(files) // 3)  # the start, then one call per chunk
