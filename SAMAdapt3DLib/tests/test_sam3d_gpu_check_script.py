"""Testing/gpu_check.sh in its dry mode (CPU, small network): every step runs and the summary holds the
bench results (the GPU steps themselves can only run on a GPU machine)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "Testing" / "gpu_check.sh"


def test_dry_run_writes_a_summary_of_every_step(tmp_path):
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_OUT": str(tmp_path)}
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "device=cpu dry_run=1" in summary
    for step in ("sam3d_fp32", "sam3d_bf16"):
        assert f"== {step}:" in summary and (tmp_path / f"{step}.txt").is_file()
    assert summary.count("full-crop forward") == 2 and summary.count("decode only") == 2
    assert "bf16 vs fp32" in summary and "Dice of the 0.5 masks" in summary
    assert "== litemedsam: (dry run: not run)" in summary and "FAILED" not in summary
