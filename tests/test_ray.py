"""The Ray launcher: helpers as Ray actors on a local two-node Ray cluster (CPU resources, gloo), equal to 1 rank;
a version mismatch is refused; nothing of Ray is left after teardown."""
import os
import subprocess
import sys
import time

import psutil
import pytest

from comfy_env import empty_latent, flux_conditioning, relative_error
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers
from helper_hooks import use_hooked_helpers
from test_community import ksample

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def ray_processes():
    names = ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor")
    return [p for p in psutil.process_iter(["cmdline"])
            if any(n in " ".join(p.info["cmdline"] or []) for n in names)]


def token_auth():
    """Ray 2.60 turns token authentication on once ~/.ray/auth_token exists (an earlier local Ray writes it): make
    every process of the test cluster, this one included, use it explicitly, whatever an earlier run left."""
    os.environ["RAY_AUTH_MODE"] = "token"
    if not os.path.exists(os.path.expanduser("~/.ray/auth_token")):
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a second node on this machine, as two hosts would be (CPU resources only)."""
    from test_server import free_port
    token_auth()
    port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        for command in (["--head", f"--port={port}", "--include-dashboard=false"], [f"--address=127.0.0.1:{port}"]):
            started = subprocess.run([RAY, "start", *command, "--num-cpus=2", "--num-gpus=0", *common],
                                     capture_output=True, text=True, timeout=120)
            assert started.returncode == 0, started.stderr[-2000:]
        os.environ.update(COMFY_XDIT_RAY_ADDRESS=f"127.0.0.1:{port}", COMFY_XDIT_ALLOW_RAY="1")
        yield port
    finally:
        helpers.shutdown_group()
        os.environ.pop("COMFY_XDIT_RAY_ADDRESS", None)
        os.environ.pop("COMFY_XDIT_ALLOW_RAY", None)
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        deadline = time.monotonic() + 20
        while ray_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not ray_processes(), "Ray processes outlived the teardown"


def test_two_ranks_through_the_ray_launcher_equal_one(unet, ray_cluster):
    import ray
    positive, negative = flux_conditioning(77, seed=1), flux_conditioning(77, seed=2)
    expected = ksample(unet, positive=positive, negative=negative, latent=empty_latent(18, 14))
    parallel = enable_multigpu(unet, gpus=3, parallelism="ring", launcher="ray")
    got = ksample(parallel, positive=positive, negative=negative, latent=empty_latent(18, 14))
    group = helpers.current_group()
    assert group is not None and group.plan.describe() == "3 CPU ranks via Ray (ulysses 1 x ring 3)"
    assert relative_error(got, expected) <= 1e-5
    # The placement group spread the two helpers over the cluster's two nodes.
    table = ray.util.placement_group_table(group.launcher.group)
    assert len(set(table["bundles_to_node_id"].values())) == 2
    helpers.shutdown_group()
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "comfy_xdit_patch.runtime.helper_process" in " ".join(p.info["cmdline"] or [])]


def test_a_ray_helper_of_another_version_is_refused(unet, ray_cluster, monkeypatch, caplog):
    import logging
    use_hooked_helpers(monkeypatch, VERSIONS="comfy_xdit_patch=9.9.9")
    positive, negative = flux_conditioning(77, seed=1), flux_conditioning(77, seed=2)
    expected = ksample(unet, positive=positive, negative=negative, latent=empty_latent(16, 16), steps=1)
    with caplog.at_level(logging.ERROR, logger="comfy_xdit_patch"):
        got = ksample(enable_multigpu(unet, gpus=2, parallelism="ring", launcher="ray"), positive=positive,
                      negative=negative, latent=empty_latent(16, 16), steps=1)
    assert relative_error(got, expected) == 0.0
    assert any("comfy_xdit_patch 9.9.9 on the helper vs 0.1.0 on rank 0" in r.getMessage() for r in caplog.records)
    assert helpers.current_group() is None


def test_ray_needs_the_server_owners_consent(unet, monkeypatch):
    """A workflow alone never starts or joins a Ray cluster: the launcher is refused before any work."""
    import ray
    monkeypatch.delenv("COMFY_XDIT_ALLOW_RAY", raising=False)
    helpers.shutdown_group()
    with pytest.raises(ValueError, match="COMFY_XDIT_ALLOW_RAY=1"):
        enable_multigpu(unet, gpus=2, parallelism="ring", launcher="ray")
    assert not ray.is_initialized() and helpers.current_group() is None


def test_a_ray_actor_killed_mid_step_ends_with_the_image_and_a_working_next_prompt(unet, ray_cluster):
    import ray
    from test_faults import sample
    expected = sample(unet, steps=3)
    parallel = enable_multigpu(unet, gpus=3, parallelism="ring", launcher="ray")

    def kill_an_actor(step):
        if step == 1:
            ray.kill(helpers.current_group().launcher.actors[0])
    assert relative_error(sample(parallel, steps=3, on_step=kill_an_actor), expected) <= 1e-5
    assert helpers.current_group() is None or not helpers.current_group().alive()
    assert relative_error(sample(parallel, steps=3), expected) <= 1e-5
    assert helpers.current_group() is not None and helpers.current_group().alive()
    helpers.shutdown_group()


def test_a_placement_group_that_never_becomes_ready_is_removed_and_the_prompt_runs_on_one_gpu(unet, ray_cluster,
                                                                                             monkeypatch, caplog):
    """Five one-CPU helpers on a cluster of four CPUs: Ray never places them."""
    import logging
    import ray
    from ray.util import placement_group_table
    from test_faults import sample
    monkeypatch.setenv("COMFY_XDIT_START_TIMEOUT", "5")
    expected = sample(unet, steps=1)
    with caplog.at_level(logging.ERROR, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(unet, gpus=6, parallelism="ring", launcher="ray"), steps=1)
    assert relative_error(got, expected) == 0.0
    assert any("could not place 5 helper(s)" in r.getMessage() for r in caplog.records)
    assert helpers.current_group() is None
    ray.init(address=os.environ["COMFY_XDIT_RAY_ADDRESS"], configure_logging=False)
    try:
        left = [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
    finally:
        ray.shutdown()
    assert not left, f"placement groups left behind: {left}"


def test_a_lost_node_ends_with_the_image_and_a_working_next_prompt(unet, ray_cluster):
    """The second node's raylet dies mid-sampling, with its actor and helper (kept last: the cluster has one node
    after it)."""
    import ray
    from test_faults import sample
    expected = sample(unet, steps=3)
    parallel = enable_multigpu(unet, gpus=3, parallelism="ring", launcher="ray")
    killed = []

    def lose_the_second_node(step):
        if step != 1:
            return
        workers = [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
        socket = "--raylet_socket_name=" + workers[0]["RayletSocketName"]
        for process in psutil.process_iter(["name", "cmdline"]):
            if process.info["name"] == "raylet" and socket in process.info["cmdline"]:
                process.kill()
                killed.append(process.pid)
    assert relative_error(sample(parallel, steps=3, on_step=lose_the_second_node), expected) <= 1e-5
    assert killed, "the second node's raylet was not found"
    assert relative_error(sample(parallel, steps=3), expected) <= 1e-5
    assert helpers.current_group() is not None and helpers.current_group().alive()
    helpers.shutdown_group()
