"""The headless ComfyUI server with this plugin in custom_nodes: a prompt over HTTP, GET /xdit/status, and the
status panel in the real ComfyUI page rendered by headless Chromium."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from comfy_env import COMFYUI_PATH, REPO

ARTIFACTS = os.environ.get("XDIT_TEST_ARTIFACTS", os.path.join(REPO, "test-artifacts"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, data=None, timeout=10):
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    nodes_dir = root / "custom_nodes"
    nodes_dir.mkdir()
    os.symlink(REPO, nodes_dir / "comfy-xdit-patch")
    config = root / "extra_model_paths.yaml"
    config.write_text(
        "xdit_tests:\n"
        f"  custom_nodes: {nodes_dir}\n"
        f"  diffusion_models: {model_files / 'diffusion_models'}\n"
        f"  text_encoders: {model_files / 'text_encoders'}\n")
    port = free_port()
    log_path = root / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
         "--disable-api-nodes", "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(config),
         "--output-directory", str(root / "output")],
        cwd=COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            get_json(base + "/object_info/EnableMultiGPU")
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise RuntimeError("ComfyUI did not start:\n" + log_path.read_text()[-4000:])
            time.sleep(0.5)
    yield base, process, log_path
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def graph(multigpu):
    g = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_flux.safetensors", "weight_dtype": "default"}},
        # sd3 over two CLIP-L files: a 4096-wide context and a pooled vector, as FLUX takes (tiny text encoders).
        "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "tiny_clip_l.safetensors",
                                                            "clip_name2": "tiny_clip_l.safetensors", "type": "sd3"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a red fox"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 144, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["unet", 0], "seed": 3, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": "xdit"}},
    }
    if multigpu:
        g["mgpu"] = {"class_type": "EnableMultiGPU", "inputs": {"model": ["unet", 0], "enabled": True, "gpus": 2,
                                                                "parallelism": "ring"}}
        g["sampler"]["inputs"]["model"] = ["mgpu", 0]
    return g


def run_prompt(base, prompt):
    prompt_id = get_json(base + "/prompt", {"prompt": prompt, "client_id": "xdit-test"})["prompt_id"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        history = get_json(f"{base}/history/{prompt_id}")
        if prompt_id in history:
            assert history[prompt_id]["status"]["status_str"] == "success", history[prompt_id]["status"]
            return history[prompt_id]
        time.sleep(0.5)
    raise AssertionError("the prompt did not finish")


def test_status_route_reports_the_group_after_a_prompt_over_http(server):
    base, process, log_path = server
    assert get_json(base + "/xdit/status")["running"] is False
    run_prompt(base, graph(multigpu=True))
    status = get_json(base + "/xdit/status")
    assert status["running"] and status["group"]["layout"] == "2 CPU ranks (ulysses 1 x ring 2)"
    assert [r["rank"] for r in status["ranks"]] == [0, 1] and all(r["alive"] for r in status["ranks"])
    assert all(r["step_ms_median"] > 0 for r in status["ranks"]), status["ranks"]
    assert status["last_run"]["one_gpu_reasons"] == []
    assert "Enable Multi-GPU: started 1 helper process(es)" in log_path.read_text()


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("headless Chromium is needed for the panel test: apt-get install chromium (.ci/run does)")


def test_status_panel_shows_the_group_in_the_comfyui_page(server):
    base, process, log_path = server
    if not get_json(base + "/xdit/status")["running"]:
        run_prompt(base, graph(multigpu=True))
    os.makedirs(ARTIFACTS, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={os.path.join(ARTIFACTS, 'chromium-profile')}", "--window-size=1400,900",
             "--virtual-time-budget=20000"]
    dom = subprocess.run([chromium(), *flags, "--dump-dom", base + "/"], capture_output=True, text=True,
                         timeout=120).stdout
    screenshot = os.path.join(ARTIFACTS, "xdit-status-panel.png")
    subprocess.run([chromium(), *flags, f"--screenshot={screenshot}", base + "/"], capture_output=True, timeout=120)
    assert 'id="xdit-status-panel"' in dom, dom[-3000:]
    panel = dom[dom.index('id="xdit-status-panel"'):][:4000]
    assert "2 CPU ranks (ulysses 1 x ring 2)" in panel and "<td>ok</td>" in panel, panel
    assert os.path.getsize(screenshot) > 10_000
