"""What the monitoring route and panel show: the helper group, its health, and the last sampling run's figures.

``GET /xdit/status`` answers from state that rank 0 already keeps (no message to the helpers: while a prompt
samples, their control channels carry the steps). Helper figures are collected after each sampling run.
"""
import logging
import os
import statistics
import threading
import time

from .parallel.peer_memory import memory_in_use

log = logging.getLogger(__name__)

_lock = threading.Lock()
_run = {"layout": None, "started": None, "one_gpu_reasons": []}


def new_run(plan):
    with _lock:
        _run.update(layout=plan.describe(), started=time.time(), one_gpu_reasons=[])


def note_one_gpu(reason):
    with _lock:
        _run["one_gpu_reasons"].append(reason)


def _median(values):
    return round(statistics.median(values), 2) if values else None


def status():
    from .runtime import group as helpers
    group = helpers.current_group()
    with _lock:
        run = dict(_run, one_gpu_reasons=list(_run["one_gpu_reasons"]))
    answer = {"running": group is not None, "last_run": run, "group": None, "ranks": []}
    if group is None:
        return answer
    plan = group.plan
    answer["group"] = {
        "layout": plan.describe(), "world_size": plan.world_size, "ulysses_degree": plan.ulysses_degree,
        "ring_degree": plan.ring_degree, "backend": plan.backend, "started_s": group.started_s,
        "weight_syncs": group.weight_syncs, "failure": group.failure,
    }
    rank0_steps = list(group.step_ms)
    rank0 = {"rank": 0, "device": str(group.device), "pid": os.getpid(), "alive": group.failure is None,
             "step_ms_median": _median(rank0_steps[-50:]), "step_ms_last": round(rank0_steps[-1], 2) if rank0_steps
             else None, "steps": len(rank0_steps)}
    if group.device.type == "cuda":
        rank0["memory_allocated"], rank0["memory_peak"] = memory_in_use(group.device)
    ranks = [rank0]
    report = group.helper_report
    for rank, process in sorted(group.processes.items()):
        figures = report.get(rank, {})
        ranks.append({"rank": rank, "device": figures.get("device"), "pid": process.pid,
                      "alive": process.poll() is None, "exit_code": process.poll(),
                      "step_ms_median": _median(figures.get("step_ms", [])[-50:]),
                      "memory_allocated": figures.get("allocated"), "memory_peak": figures.get("peak_allocated")})
    answer["ranks"] = ranks
    answer["helper_figures_collected"] = report.get("collected")
    return answer


def register_routes():
    """Adds GET /xdit/status to ComfyUI's server, when this process has one (not in helpers, not in plain scripts)."""
    try:
        from server import PromptServer
        from aiohttp import web
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False

    @instance.routes.get("/xdit/status")
    async def xdit_status(request):
        return web.json_response(status())

    log.info("Enable Multi-GPU: monitoring at GET /xdit/status")
    return True
