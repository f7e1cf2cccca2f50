"""The README's main job, end to end, exactly as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    work = tmp_path / "demo"
    (work / "run").mkdir(parents=True)  # a previous demo's run: the README's command must still work a second time
    (work / "run" / "checkpoint.pth").write_bytes(b"from an earlier run")
    proc = subprocess.run(["bash", str(REPO / "pipelines/quickstart.sh"), str(work)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "matches" in proc.stdout and "rank-1" in proc.stdout and "mAP" in proc.stdout
    assert f"removing the previous demo run {work / 'run'}: training starts clean" in proc.stdout
    for png in ("preview.png", "curves.png", "vis/index.png"):
        assert (work / png).stat().st_size > 1000, png
    result = json.loads((work / "run" / "evaluations.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= result["mAP"] <= 1.0 and result["num_query"] > 0
