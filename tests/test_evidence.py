"""The GPU evidence scenarios (python -m comfy_xdit_patch.evidence ...) run on CPU ranks, exact against 1 rank, so
that time on a GPU machine goes to the runs, not to fixing the scripts."""
import os
import subprocess
import sys

import pytest

from comfy_env import COMFYUI_PATH, REPO


SCENARIOS = ("spotcheck", "kill", "stall", "groups", "formats", "dynamic", "devices")


@pytest.fixture(scope="module")
def evidence_run():
    """Every scenario in one run of the tool (one ComfyUI start: it takes longer than most scenarios)."""
    out = subprocess.run([sys.executable, "-m", "comfy_xdit_patch.evidence", *SCENARIOS, "--cpu", "--steps", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, COMFYUI_PATH=COMFYUI_PATH, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_evidence_scenario_runs_and_is_exact(evidence_run, scenario):
    _, found, section = evidence_run.partition(f"\n# {scenario}: ")
    assert found, evidence_run
    section = section.split("\n# ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert rows, section
    assert "helpers running: False" not in section, section
    if scenario == "dynamic":   # a strength change between prompts re-syncs the running helpers
        assert "same helpers, weight syncs 1 -> 2" in section, section
    for row in rows:
        error = float(row.strip("|").split("|")[4])
        assert error <= 1e-5, row


def test_random_models_are_built_whole_under_dynamic_vram():
    """ComfyUI's layers create no weight until loaded while dynamic VRAM is on, so a state dict read from a model
    built then has 12 keys and ComfyUI's loader returns None for it. The builders read shapes with that off, and
    leave it as it was."""
    import comfy.memory_management
    from comfy_xdit_patch.bench import TINY, load_random_flux, random_flux_state_dict
    import torch
    replicated = random_flux_state_dict(TINY, torch.float32, torch.device("cpu"))
    comfy.memory_management.aimdo_enabled = True
    try:
        lazy = random_flux_state_dict(TINY, torch.float32, torch.device("cpu"))
        assert comfy.memory_management.aimdo_enabled is True
        assert lazy.keys() == replicated.keys() and len(lazy) > 50   # 12 without the fix
        assert load_random_flux(TINY, torch.float32, torch.device("cpu")) is not None
    finally:
        comfy.memory_management.aimdo_enabled = False
