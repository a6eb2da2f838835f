"""A VoxCeleb-style folder tree with good and bad files, for the manifest and `prepare`."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from support.audio import write_aac

# (speaker, video, file, samples); the tree also gets bad files and files that are not part of the layout
GOOD = [
    ("id00012", "vidA", "00001.wav", 16000),
    ("id00012", "vidA", "00002.flac", 20000),
    ("id00012", "vidB", "00001.wav", 24160),
    ("id00003", "x-Y_z", "00007.wav", 17000),
    ("id00003", "x-Y_z", "00008.m4a", 32000),
    ("id10270", "q", "00001.flac", 40000),
    ("id10270", "q", "00003.ogg", 24000),
]


def make_tree(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    for speaker, video, name, n in GOOD:
        path = root / speaker / video / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pcm = (rng.normal(0, 0.1, n) * 32767).clip(-32768, 32767).astype(np.int16)
        if name.endswith(".m4a"):
            write_aac(path, pcm)
        elif name.endswith(".ogg"):
            sf.write(path, pcm, 16000, format="OGG", subtype="VORBIS")
        else:
            sf.write(path, pcm, 16000, subtype="PCM_16")
    bad = {
        "truncated": root / "id00012" / "vidB" / "00002.wav",
        "not_audio": root / "id00003" / "x-Y_z" / "00009.wav",
        "empty": root / "id10270" / "q" / "00002.flac",
    }
    sf.write(bad["truncated"], np.ones(32000, np.int16), 16000, subtype="PCM_16")
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["not_audio"].write_text("this is not audio, despite its name")
    bad["empty"].write_bytes(b"")
    (root / "id00012" / "vidA" / "notes.txt").write_text("ignored")  # not an audio suffix
    (root / "id00012" / "stray.wav").write_bytes(data)  # wrong depth
    (root / "README.wav").write_bytes(data)  # wrong depth
    return bad


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "vox" / "dev" / "aac"
    bad = make_tree(root)
    return root, bad
