"""docs/plugins.md's worked examples run as written (in a fresh process, so that the
example plugins never join this session's registries)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_every_python_block_of_the_plugin_guide_runs(tiny_root, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 3  # encoder, fusion head, CTR model
    (tmp_path / "data").symlink_to(tiny_root)
    script = tmp_path / "examples.py"
    script.write_text("\n\n".join(blocks) + "\nprint('all examples ran')\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("all examples ran")
    assert (tmp_path / "runs" / "mean_pool" / "result.json").is_file()


def test_the_guide_names_files_that_exist():
    root = DOC.parents[1]
    for name in re.findall(r"`((?:mmembed|ctr_eval|tests)/[\w/]+\.py)`", DOC.read_text(encoding="utf-8")):
        if name in ("mmembed/fusion/random_projection.py",):  # the example's own file
            continue
        assert (root / name).is_file(), name
