"""The Ray launcher with no cluster address: it starts a Ray instance on this machine for the helpers, and stops it
with them."""

import os
import subprocess
import sys

from comfy_env import empty_latent, flux_conditioning, relative_error
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers
from test_community import ksample
from test_ray import ray_processes


NO_TOKEN_CLIENT = """
import ray, sys
try:
    ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
except Exception as e:
    print("REFUSED", type(e).__name__)
else:
    print("CONNECTED")
"""


def test_ray_launcher_starts_and_stops_its_own_local_ray(unet, monkeypatch):
    import ray
    monkeypatch.delenv("COMFY_XDIT_RAY_ADDRESS", raising=False)
    monkeypatch.setenv("COMFY_XDIT_ALLOW_RAY", "1")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)   # Ray's own default for a local instance: token
    helpers.shutdown_group()
    assert not ray.is_initialized()
    positive, negative = flux_conditioning(77, seed=1), flux_conditioning(77, seed=2)
    expected = ksample(unet, positive=positive, negative=negative, latent=empty_latent(16, 16))
    got = ksample(enable_multigpu(unet, gpus=2, parallelism="ulysses", launcher="ray"), positive=positive,
                  negative=negative, latent=empty_latent(16, 16))
    assert relative_error(got, expected) <= 1e-5
    assert ray.is_initialized() and helpers.current_group().launcher.started_ray
    # The Ray instance the plugin started takes only calls that carry its token.
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    assert is_token_auth_enabled()
    stranger = subprocess.run([sys.executable, "-c", NO_TOKEN_CLIENT, ray.get_runtime_context().gcs_address],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token"))
    assert "REFUSED" in stranger.stdout, stranger.stdout + stranger.stderr[-2000:]
    helpers.shutdown_group()
    assert not ray.is_initialized()
    import time
    deadline = time.monotonic() + 20
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(), "the local Ray instance outlived the helpers"
