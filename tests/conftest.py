"""Test-wide settings: tiny models run fastest (and most predictably on a busy 2-core machine) on one thread."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses (CLI, torchrun) the tests start

import torch  # noqa: E402

torch.set_num_threads(1)
