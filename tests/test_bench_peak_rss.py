"""bench/_peak_rss.py: a child's peak memory is its own, not its parent's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_child_peak_rss_leaves_out_the_parents_memory():
    held = np.ones(600 * 2**20 // 8)  # the parent holds 600 MB while the child runs
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import resource; from _peak_rss import peak_rss_mb; "
            "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=True)
    own, inherited = map(float, out.stdout.split())
    assert held.sum() == held.size
    assert 3 < own < 300  # a bare Python process, well under the parent's 600 MB
    # where the kernel carries the high-water mark into the child, ru_maxrss shows it
    assert inherited >= own
