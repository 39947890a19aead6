"""The README's main-job command on a machine without GPUs: 1 vs N CPU ranks on ComfyUI's FLUX, a table with the
speed-up and the error against 1 rank."""
import os
import re
import subprocess
import sys

from comfy_env import COMFYUI_PATH, REPO


def test_main_job_command_prints_speedup_and_equivalence():
    out = subprocess.run([sys.executable, "-m", "comfy_xdit_patch.bench", "--cpu", "--steps", "3", "--e2e-steps", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, COMFYUI_PATH=COMFYUI_PATH, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| auto |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2 CPU ranks (ulysses 2 x ring 1)"
    assert re.fullmatch(r"\d+\.\d\dx", cells[6]), cells[6]
    assert float(cells[11]) <= 1e-5, f"relative error {cells[11]}"
    assert "end-to-end 3-step prompt at 256" in out.stdout
