""".ci/run and .ci/venv.sh find ComfyUI through .ci/find_comfyui.sh: $COMFYUI_PATH, else the ComfyUI the plugin sits in
(<ComfyUI>/custom_nodes/<plugin>), else /opt/ComfyUI; without one they fail loudly, naming every place tried. .ci/run
passes -rs to pytest and fails when pytest collects nothing (exit code 5).

Each case copies the repository's .ci into a fake plugin folder and runs the scripts there with bash."""
import os
import shutil
import subprocess

import pytest

from comfy_env import REPO


def make_comfyui(path):
    os.makedirs(os.path.join(path, "comfy"))
    open(os.path.join(path, "comfy", "model_patcher.py"), "w").close()
    with open(os.path.join(path, "requirements.txt"), "w") as f:
        f.write("numpy\n")
    return str(path)


def make_plugin(parent):
    plugin = os.path.join(parent, "comfy-xdit-patch")
    shutil.copytree(os.path.join(REPO, ".ci"), os.path.join(plugin, ".ci"))
    os.makedirs(os.path.join(plugin, "tests"))
    shutil.copy(os.path.join(REPO, "tests", "requirements.txt"), os.path.join(plugin, "tests"))
    return plugin


def run(plugin, script, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "COMFY_XDIT_VENV")}
    # /opt/ComfyUI stays out of these cases unless one names it.
    env["COMFY_XDIT_DEFAULT_COMFYUI"] = str(tmp_path / "no-default-comfyui")
    env.update(env_extra)
    return subprocess.run(["bash", os.path.join(plugin, ".ci", script)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def layout(tmp_path):
    """<tmp>/ComfyUI/custom_nodes/comfy-xdit-patch/.ci, and a second ComfyUI elsewhere."""
    comfyui = make_comfyui(tmp_path / "ComfyUI")
    plugin = make_plugin(os.path.join(comfyui, "custom_nodes"))
    other = make_comfyui(tmp_path / "other" / "ComfyUI")
    return comfyui, plugin, other


def test_finds_the_comfyui_the_plugin_sits_in(layout, tmp_path):
    comfyui, plugin, _ = layout
    found = run(plugin, "find_comfyui.sh", {}, tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == os.path.realpath(comfyui)


def test_comfyui_path_comes_first(layout, tmp_path):
    _, plugin, other = layout
    found = run(plugin, "find_comfyui.sh", {"COMFYUI_PATH": other}, tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == os.path.realpath(other)


def test_the_default_comes_last(tmp_path):
    plugin = make_plugin(tmp_path / "loose")
    default = make_comfyui(tmp_path / "default" / "ComfyUI")
    found = run(plugin, "find_comfyui.sh", {"COMFY_XDIT_DEFAULT_COMFYUI": default}, tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == os.path.realpath(default)


def test_a_wrong_comfyui_path_is_an_error_not_passed_over(layout, tmp_path):
    _, plugin, _ = layout
    wrong = str(tmp_path / "nothing-here")
    found = run(plugin, "find_comfyui.sh", {"COMFYUI_PATH": wrong}, tmp_path)
    assert found.returncode == 1 and found.stdout == ""
    assert wrong in found.stderr and "COMFYUI_PATH=/path/to/ComfyUI bash .ci/run" in found.stderr


@pytest.mark.parametrize("script", ["find_comfyui.sh", "venv.sh", "run"])
def test_without_comfyui_every_script_fails_naming_the_places_tried(tmp_path, script):
    plugin = make_plugin(tmp_path / "loose" / "custom_nodes")
    found = run(plugin, script, {}, tmp_path)
    assert found.returncode == 1, (found.returncode, found.stderr)
    assert found.stdout == ""
    message = found.stderr
    assert "FAIL: ComfyUI not found" in message
    for place in ("$COMFYUI_PATH", str(tmp_path / "loose"), str(tmp_path / "no-default-comfyui")):
        assert place in message, place
    assert "COMFYUI_PATH=/path/to/ComfyUI bash .ci/run" in message
    assert "README" in message and '"Tests"' in message


def fake_venv(tmp_path, exit_code):
    """A venv whose python only reports its arguments and exits with exit_code (venv.sh reuses a complete one)."""
    venv = tmp_path / "venv"
    os.makedirs(venv / "bin")
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "pytest args: $*"\nexit {exit_code}\n')
    python.chmod(0o755)
    (venv / ".complete").touch()
    bin_dir = tmp_path / "bin"
    os.makedirs(bin_dir)
    chromium = bin_dir / "chromium"    # present, so .ci/run installs nothing
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)
    return {"COMFY_XDIT_VENV": str(venv), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("pytest_exit, run_exit", [(0, 0), (1, 1), (5, 1)])
def test_run_passes_minus_rs_and_fails_when_no_test_ran(layout, tmp_path, pytest_exit, run_exit):
    comfyui, plugin, _ = layout
    done = run(plugin, "run", fake_venv(tmp_path, pytest_exit), tmp_path)
    assert done.returncode == run_exit, done.stderr
    assert "pytest args: -m pytest tests -q -rs" in done.stdout
    assert os.path.realpath(comfyui) in done.stderr
    assert ("collected no tests" in done.stderr) == (pytest_exit == 5)
