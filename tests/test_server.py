"""The headless ComfyUI server with this plugin in custom_nodes: a prompt over HTTP, GET /xdit/status, two copies of
the plugin side by side, and the Multi-GPU tab in the real ComfyUI page driven by headless Chromium."""
import asyncio
import base64
import contextlib
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


def end_process(process):
    """Asks a server or browser process to end, then kills it if it has not within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, data=None, timeout=10):
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def comfyui_server(root, model_files):
    """ComfyUI's main.py on the CPU with ``root/custom_nodes`` and the tiny models; yields (base URL, log path)."""
    config = root / "extra_model_paths.yaml"
    config.write_text(
        "xdit_tests:\n"
        f"  custom_nodes: {root / 'custom_nodes'}\n"
        f"  diffusion_models: {model_files / 'diffusion_models'}\n"
        f"  text_encoders: {model_files / 'text_encoders'}\n")
    user = root / "user"
    (user / "default").mkdir(parents=True)
    # No first-visit template browser over the page in the screenshot.
    (user / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = free_port()
    log_path = root / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
         "--disable-api-nodes", "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(config),
         "--output-directory", str(root / "output"), "--user-directory", str(user)],
        cwd=COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                get_json(base + "/object_info/EnableMultiGPU")
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ComfyUI did not start:\n" + log_path.read_text()[-4000:])
                time.sleep(0.5)
        yield base, log_path
    finally:
        end_process(process)
        log.close()


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    (root / "custom_nodes").mkdir()
    os.symlink(REPO, root / "custom_nodes" / "comfy-xdit-patch")
    with comfyui_server(root, model_files) as (base, log_path):
        yield base, log_path


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


def status_after_a_prompt(base):
    status = get_json(base + "/xdit/status")
    if not status["running"]:
        run_prompt(base, graph(multigpu=True))
        status = get_json(base + "/xdit/status")
    return status


class RemoteHelper:
    """A helper whose ``poll`` is a remote call, as a Ray actor's is (up to 5 s each)."""
    pid = 4242

    def poll(self):
        time.sleep(5)
        raise AssertionError("the status route called poll() on a helper")


def test_status_answers_from_the_health_threads_exit_codes_without_polling_helpers():
    from comfy_xdit_patch import monitor
    from comfy_xdit_patch.config import ParallelPlan
    from comfy_xdit_patch.runtime import helper_group as helpers
    group = helpers.HelperGroup(ParallelPlan("cpu", (None, None, None), 1, 3))
    group.processes = {1: RemoteHelper(), 2: RemoteHelper()}
    group.exit_codes = {1: None, 2: -9}
    group.step_ms.extend([50.0, 51.0, 10.0, 11.0, 12.0])     # two runs; the last one had 3 steps
    group.helper_report = {1: {"device": "cpu", "step_ms": [9.5, 10.5, 11.5]},
                           2: {"device": "cpu", "step_ms": [9.0, 10.0, 11.0]}, "collected": time.time()}
    started = time.monotonic()
    answer = monitor.status(group)
    assert time.monotonic() - started < 0.5
    assert [(r["rank"], r["alive"], r["exit_code"], r["pid"]) for r in answer["ranks"]] == [
        (0, True, None, os.getpid()), (1, True, None, 4242), (2, False, -9, 4242)]
    assert [r["run_step_ms"] for r in answer["ranks"]] == [[10.0, 11.0, 12.0], [9.5, 10.5, 11.5], [9.0, 10.0, 11.0]]
    json.dumps(answer)   # what the route sends


def test_while_a_run_samples_the_plot_keeps_the_previous_runs_steps(monkeypatch):
    from comfy_xdit_patch import monitor
    from comfy_xdit_patch.config import ParallelPlan
    from comfy_xdit_patch.runtime import helper_group as helpers
    group = helpers.HelperGroup(ParallelPlan("cpu", (None, None), 1, 2))
    group.processes = {1: RemoteHelper()}
    group.step_ms.extend([10.0, 11.0])
    group.helper_report = {1: {"step_ms": [9.0, 10.0]}, "collected": time.time() - 1}
    monkeypatch.setattr(helpers, "_group", group)
    monitor.new_run(group.plan)
    group.step_ms.append(30.0)          # the new run's first step, before the helpers' figures are collected
    answer = monitor.status(group)
    assert answer["last_run"]["steps_from"] == "previous run"
    assert [r["run_step_ms"] for r in answer["ranks"]] == [[10.0, 11.0], [9.0, 10.0]]
    group.helper_report = {1: {"step_ms": [29.0]}, "collected": time.time()}
    answer = monitor.status(group)
    assert answer["last_run"]["steps_from"] == "last run"
    assert [r["run_step_ms"] for r in answer["ranks"]] == [[30.0], [29.0]]


def test_a_second_route_registration_on_the_same_server_is_skipped(monkeypatch, caplog):
    import server as comfy_server
    from comfy_xdit_patch import monitor
    monkeypatch.setattr(comfy_server.PromptServer, "instance", None, raising=False)
    loop = asyncio.new_event_loop()
    try:
        instance = comfy_server.PromptServer(loop)
        assert monitor.register_routes() is True
        assert monitor.register_routes() is False
        instance.add_routes()   # raises when a method of a path is registered twice
    finally:
        loop.close()
    assert "GET /xdit/status is already served by the plugin in" in caplog.text
    paths = [route.resource.canonical for route in instance.app.router.routes() if route.method == "GET"]
    assert paths.count("/xdit/status") == 1 and paths.count("/api/xdit/status") == 1


def copy_plugin(destination):
    """The plugin as a Manager install or a backup folder holds it: its own files, not a link to this clone."""
    destination.mkdir()
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("__init__.py", "pyproject.toml"):
        shutil.copy(os.path.join(REPO, name), destination / name)
    for name in ("comfy_xdit_patch", "web"):
        shutil.copytree(os.path.join(REPO, name), destination / name, ignore=ignore)


def test_comfyui_starts_with_two_copies_of_the_plugin_and_says_which_one_it_skipped(model_files, tmp_path):
    nodes_dir = tmp_path / "custom_nodes"
    nodes_dir.mkdir()
    os.symlink(REPO, nodes_dir / "comfy-xdit-patch")
    copy_plugin(nodes_dir / "comfy-xdit-patch.backup")
    with comfyui_server(tmp_path, model_files) as (base, log_path):
        assert "EnableMultiGPU" in get_json(base + "/object_info", timeout=60)
        assert get_json(base + "/xdit/status")["running"] is False
        scripts = [path for path in get_json(base + "/extensions") if path.endswith("/xdit_panel.js")]
        assert len(scripts) == 1, scripts
        text = log_path.read_text()
    lines = [line for line in text.splitlines() if "Enable Multi-GPU: skipping the copy in" in line]
    assert len(lines) == 1, text[-4000:]
    assert str(nodes_dir / "comfy-xdit-patch") in lines[0] and str(nodes_dir / "comfy-xdit-patch.backup") in lines[0]
    assert "IMPORT FAILED" not in text and "already registered" not in text, text[-4000:]


def test_status_route_reports_the_group_after_a_prompt_over_http(server):
    base, log_path = server
    assert get_json(base + "/xdit/status")["running"] is False
    run_prompt(base, graph(multigpu=True))
    status = get_json(base + "/xdit/status")
    assert status["running"] and status["group"]["layout"] == "2 CPU ranks (ulysses 1 x ring 2)"
    assert [r["rank"] for r in status["ranks"]] == [0, 1] and all(r["alive"] for r in status["ranks"])
    assert all(r["step_ms_median"] > 0 for r in status["ranks"]), status["ranks"]
    assert status["last_run"]["one_gpu_reasons"] == []
    # The 3 steps of the last run, as each rank timed them.
    assert status["last_run"]["steps_from"] == "last run"
    assert [len(r["run_step_ms"]) for r in status["ranks"]] == [3, 3], status["ranks"]
    assert all(ms > 0 for r in status["ranks"] for ms in r["run_step_ms"])
    assert "Enable Multi-GPU: started 1 helper process(es)" in log_path.read_text()


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("headless Chromium is needed for the tab test: apt-get install chromium (.ci/run does)")


class DevTools:
    """One page of a headless Chromium, driven over its DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, socket):
        self.socket, self.next_id = socket, 0

    async def send(self, method, **params):
        self.next_id += 1
        await self.socket.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.socket.receive_json(timeout=60)
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression, timeout=90):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never had {expression}")
            await asyncio.sleep(0.5)


@contextlib.contextmanager
def headless_chromium(profile):
    shutil.rmtree(profile, ignore_errors=True)
    process = subprocess.Popen(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1400,900", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.2)
        yield int(open(port_file).read().split()[0])
    finally:
        end_process(process)


# What the test reads back from the tab: its button, its rows, and the plot's series (one per rank).
TAB_STATE = """(() => {
  const tab = document.querySelector("#xdit-status");
  if (!tab) return null;
  const series = [...tab.querySelectorAll("svg.xdit-plot .xdit-series")];
  return {
    button: !!document.querySelector(".xdit-status-tab-button"),
    layout: tab.querySelector(".xdit-layout")?.textContent,
    rows: [...tab.querySelectorAll("tr[data-rank]")].map((row) => row.innerText),
    series: series.map((g) => ({rank: g.dataset.rank,
                                points: g.querySelector("polyline").getAttribute("points").trim().split(" ").length})),
    floating: !!document.querySelector("#xdit-status-panel"),
  };
})()"""


async def open_the_tab(base, port, screenshot):
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            target = next(t for t in await response.json() if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            page = DevTools(socket)
            await page.send("Page.navigate", url=base + "/")
            await page.wait_for("!!document.querySelector('.xdit-status-tab-button')")
            await page.evaluate("document.querySelector('.xdit-status-tab-button').click()")
            state = await page.wait_for(f"(() => {{ const s = {TAB_STATE}; return s && s.series.length ? s : null }})()")
            shot = await page.send("Page.captureScreenshot", format="png")
            with open(screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            return state


def test_the_multigpu_tab_plots_each_ranks_step_times_in_the_comfyui_page(server):
    base, log_path = server
    status = status_after_a_prompt(base)
    os.makedirs(ARTIFACTS, exist_ok=True)
    screenshot = os.path.join(ARTIFACTS, "xdit-status-tab.png")
    with headless_chromium(os.path.join(ARTIFACTS, "chromium-profile")) as port:
        state = asyncio.run(open_the_tab(base, port, screenshot))
    assert state["button"] and not state["floating"], state
    assert state["layout"] == "2 CPU ranks (ulysses 1 x ring 2)", state
    assert len(state["rows"]) == 2 and all("ok" in row for row in state["rows"]), state
    steps = {str(r["rank"]): len(r["run_step_ms"]) for r in status["ranks"]}
    assert {s["rank"]: s["points"] for s in state["series"]} == steps == {"0": 3, "1": 3}, state
    assert os.path.getsize(screenshot) > 10_000
