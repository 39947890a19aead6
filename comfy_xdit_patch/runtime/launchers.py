"""How helper processes come to life: on this machine (``local``), or as Ray actors anywhere in a Ray cluster
(``ray``, for GPUs beyond one machine). Either way the helper is the same ``comfy_xdit_patch.runtime.helper_process``
process and everything after its start (rendezvous, NCCL/gloo, weights, steps) is the same.

A launcher returns, per helper, an object with the part of ``subprocess.Popen`` the group uses: ``pid``,
``poll()``, ``wait(timeout)``, ``kill()``.
"""
import ctypes
import logging
import os
import signal
import subprocess
import sys

from .. import envs

log = logging.getLogger(__name__)

HELPER = [sys.executable, "-m", "comfy_xdit_patch.runtime.helper_process"]


_PR_SET_PDEATHSIG = 1
# Resolved here, not between fork and exec, where a multithreaded parent's child may take no locks.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent():
    """Runs in the child between fork and exec: the kernel sends it SIGKILL when the thread that started it ends,
    even while the helper is stuck where no Python thread of its own could notice (a blocked CUDA launch queue).
    Helpers are started from a long-lived thread: ComfyUI's prompt thread, the thread that keeps helpers started with
    ComfyUI, or a Ray actor's."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalLauncher:
    def __init__(self, plan):
        self.plan = plan

    def spawn(self, rank, arguments, helper_env):
        return subprocess.Popen(HELPER + arguments, env=dict(os.environ, **helper_env), stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)

    def close(self):
        pass


def check_allowed(launcher):
    """The Ray launcher starts or joins a cluster that runs code on every node: only the server owner may allow it
    (COMFY_XDIT_ALLOW_RAY=1 where ComfyUI starts), never a workflow alone."""
    if launcher == "ray" and not envs.COMFY_XDIT_ALLOW_RAY:
        raise ValueError("launcher 'ray' is off on this server: a Ray cluster runs code on every node it reaches, so "
                         "only whoever starts ComfyUI can allow it, with COMFY_XDIT_ALLOW_RAY=1 (README: Multiple "
                         "machines). Use launcher 'local' for the GPUs of this machine.")


class RayLauncher:
    """One Ray actor per helper, each holding one GPU (or one CPU for CPU ranks), spread over the cluster's nodes by
    a placement group. The actor starts the helper process on its node and reports on it. ``COMFY_XDIT_RAY_ADDRESS``
    names the cluster; empty starts a Ray instance on this machine for its own GPUs, on loopback with Ray's token
    authentication. Every Ray call that waits has a deadline: a cluster that cannot place the helpers, a lost node or
    a dead actor ends as a failed start or a dead helper, never a hang."""

    def __init__(self, plan):
        check_allowed("ray")
        try:
            import ray
            from ray.util.placement_group import placement_group
        except ImportError as e:
            raise RuntimeError("launcher 'ray' needs Ray: pip install comfy-xdit-patch[ray]") from e
        self.ray = ray
        self.plan = plan
        self.actors = []
        self.group = None
        address = envs.COMFY_XDIT_RAY_ADDRESS
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            if address:
                if os.environ.get("RAY_AUTH_MODE") != "token":
                    log.warning("Enable Multi-GPU: joining the Ray cluster at %s without RAY_AUTH_MODE=token; anyone "
                                "who reaches it can run code on its nodes. Start it with token authentication.",
                                address)
                ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
            else:
                # A Ray instance of our own requires its token on every call (Ray's default for a local instance
                # since 2.59). Ray binds its ports to this machine's address, which ray.init cannot confine to
                # loopback: the token is what keeps other hosts out. RAY_AUTH_MODE=disabled is refused.
                if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
                    raise RuntimeError("launcher 'ray' starts a local Ray instance only with token authentication; "
                                       "unset RAY_AUTH_MODE (or set it to token) where ComfyUI starts.")
                ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
        resource = {"GPU": 1} if plan.device_type == "cuda" else {"CPU": 1}
        wait_s = envs.COMFY_XDIT_START_TIMEOUT
        try:
            self.group = placement_group([dict(resource) for _ in range(plan.world_size - 1)], strategy="SPREAD")
            ray.get(self.group.ready(), timeout=wait_s)
        except BaseException as e:
            self.close()   # the pending placement group would otherwise hold the cluster's resources
            raise RuntimeError(f"the Ray cluster could not place {plan.world_size - 1} helper(s) with "
                               f"{resource} each within {wait_s:.0f} s ({type(e).__name__}); add nodes or lower "
                               "gpus") from e

    def spawn(self, rank, arguments, helper_env):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        host = _helper_host_class(self.ray).options(
            num_cpus=0 if self.plan.device_type == "cuda" else 1,
            num_gpus=1 if self.plan.device_type == "cuda" else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=rank - 1),
        ).remote()
        self.actors.append(host)
        pid = self.ray.get(host.start.remote(HELPER + arguments, helper_env), timeout=envs.COMFY_XDIT_START_TIMEOUT)
        return RayHelperProcess(self.ray, host, pid)

    def close(self):
        """Never raises: it runs on failure paths, where actors, nodes or the cluster may be gone."""
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []
        if self.group is not None:
            try:
                from ray.util.placement_group import remove_placement_group
                remove_placement_group(self.group)
            except Exception:
                log.debug("placement group removal failed", exc_info=True)
            self.group = None
        if self.started_ray:
            try:
                self.ray.shutdown()
            except Exception:
                log.warning("Enable Multi-GPU: shutting Ray down failed", exc_info=True)
            self.started_ray = False


class RayHelperProcess:
    def __init__(self, ray, host, pid):
        self.ray, self.host, self.pid = ray, host, pid

    def poll(self):
        try:
            return self.ray.get(self.host.poll.remote(), timeout=5)
        except self.ray.exceptions.GetTimeoutError:   # a busy actor or a slow cluster: no news yet
            return None
        except Exception:     # the actor (or its node) is gone: so is the helper
            return -1

    def wait(self, timeout=None):
        try:
            code = self.ray.get(self.host.wait.remote(timeout), timeout=None if timeout is None else timeout + 5)
        except self.ray.exceptions.GetTimeoutError:
            raise subprocess.TimeoutExpired(HELPER, timeout) from None
        except Exception:     # the actor (or its node) is gone, and the helper with it (PR_SET_PDEATHSIG)
            return -1
        if code is None:
            raise subprocess.TimeoutExpired(HELPER, timeout)
        return code

    def kill(self):
        try:
            self.ray.get(self.host.kill.remote(), timeout=10)
        except Exception:
            pass


_host_class = None


def _helper_host_class(ray):
    """The actor class, defined on first use so that Ray stays an optional dependency."""
    global _host_class
    if _host_class is None:
        @ray.remote
        class HelperHost:
            def start(self, command, helper_env):
                env = dict(os.environ, **helper_env)
                import ctypes
                import signal
                prctl = ctypes.CDLL(None).prctl   # resolved before the fork, as in die_with_parent

                def die_with_actor():   # as die_with_parent, defined here: the actor may not import this module
                    prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG

                self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_actor)
                return self.process.pid

            def poll(self):
                return self.process.poll()

            def wait(self, timeout=None):
                try:
                    return self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    return None

            def kill(self):
                self.process.kill()
                return self.process.wait()

        _host_class = HelperHost
    return _host_class


def make_launcher(plan):
    return RayLauncher(plan) if plan.launcher == "ray" else LocalLauncher(plan)
