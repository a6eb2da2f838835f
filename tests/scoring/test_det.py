import os
import subprocess
import sys

import numpy as np
import pytest

from ghostvlad.scoring.det import plot_det

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curve(shift, seed, n=2000):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(shift, 1, n), rng.normal(0, 1, n)], np.r_[np.ones(n, int), np.zeros(n, int)]


def test_plot_det_writes_png_atomically(tmp_path):
    out = tmp_path / "plots" / "det.png"
    plot_det({"good": _curve(3.0, 0), "bad": _curve(0.3, 1)}, out, title="DET")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert os.listdir(out.parent) == ["det.png"]
    plot_det({"again": _curve(2.0, 2)}, out)  # replaces an existing file
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert os.listdir(out.parent) == ["det.png"]


def test_plot_det_failure_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="at least one curve"):
        plot_det({}, tmp_path / "det.png")
    with pytest.raises(ValueError, match="need both target"):
        plot_det({"x": ([0.1, 0.2], [1, 1])}, tmp_path / "det.png")
    assert os.listdir(tmp_path) == []


def test_scoring_import_does_not_load_matplotlib():
    code = "import sys, ghostvlad.scoring, ghostvlad.scoring.det; sys.exit('matplotlib' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
