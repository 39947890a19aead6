"""What the monitoring route and the Multi-GPU tab show: the helper group, its health, and the last sampling run's
figures, step times per rank included.

``GET /xdit/status`` answers from state that rank 0 already keeps, inside aiohttp's event loop: no message to the
helpers (while a prompt samples, their control channels carry the steps) and no call on their processes (a Ray
helper's ``poll`` is a remote call). Helper health comes from the group's health thread, helper figures from the
collection after each sampling run.
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
_finished_steps = {}   # per rank, the step times of the run before the current one (shown while it samples)


def new_run(plan):
    from .runtime import helper_group
    group = helper_group.current_group()
    finished = last_run_steps(group) if group is not None else {}   # before this run adds to rank 0's
    with _lock:
        _run.update(layout=plan.describe(), started=time.time(), one_gpu_reasons=[])
        _finished_steps.clear()
        _finished_steps.update(finished)


def note_one_gpu(reason):
    with _lock:
        _run["one_gpu_reasons"].append(reason)


def _median(values):
    return round(statistics.median(values), 2) if values else None


def last_run_steps(group):
    """{rank: step times in ms} of the last sampling run whose helper figures were collected. The helpers clear
    theirs at each collection; rank 0 took part in the same steps, the newest of its own."""
    report = group.helper_report
    steps = {rank: list(report.get(rank, {}).get("step_ms", [])) for rank in dict(group.processes)}
    count = max(map(len, steps.values()), default=0)
    rank0 = list(group.step_ms.copy())
    steps[0] = rank0[len(rank0) - count:] if count else []
    return steps


def status(group):
    """The route's answer for ``group`` (the running helper group, or None): reads rank 0's memory only."""
    with _lock:
        run = dict(_run, one_gpu_reasons=list(_run["one_gpu_reasons"]))
        finished = dict(_finished_steps)
    answer = {"running": group is not None, "last_run": run, "group": None, "ranks": []}
    if group is None:
        return answer
    plan = group.plan
    report = group.helper_report
    collected = report.get("collected")
    sampling = run["started"] is not None and (collected is None or collected < run["started"])
    steps = finished if sampling else last_run_steps(group)
    run["steps_from"] = "previous run" if sampling else "last run"
    answer["group"] = {
        "layout": plan.describe(), "world_size": plan.world_size, "ulysses_degree": plan.ulysses_degree,
        "ring_degree": plan.ring_degree, "backend": plan.backend, "started_s": group.started_s,
        "weight_syncs": group.weight_syncs, "failure": group.failure,
    }
    rank0_steps = list(group.step_ms.copy())
    rank0 = {"rank": 0, "device": str(group.device), "pid": os.getpid(), "alive": group.failure is None,
             "exit_code": None, "step_ms_median": _median(rank0_steps[-50:]),
             "step_ms_last": round(rank0_steps[-1], 2) if rank0_steps else None, "steps": len(rank0_steps)}
    if group.device.type == "cuda":
        rank0["memory_allocated"], rank0["memory_peak"] = memory_in_use(group.device)
    ranks = [rank0]
    exit_codes = dict(getattr(group, "exit_codes", {}))
    for rank, process in sorted(dict(group.processes).items()):
        figures = report.get(rank, {})
        ranks.append({"rank": rank, "device": figures.get("device"), "pid": process.pid,
                      "alive": exit_codes.get(rank) is None, "exit_code": exit_codes.get(rank),
                      "step_ms_median": _median(figures.get("step_ms", [])[-50:]),
                      "memory_allocated": figures.get("allocated"), "memory_peak": figures.get("peak_allocated")})
    for entry in ranks:
        entry["run_step_ms"] = [round(ms, 3) for ms in steps.get(entry["rank"], [])]
    answer["ranks"] = ranks
    answer["helper_figures_collected"] = collected
    return answer


def register_routes():
    """Adds GET /xdit/status to ComfyUI's server, when this process has one (not in helpers, not in plain scripts),
    once per server: a second registration of the route would stop ComfyUI from starting."""
    try:
        from server import PromptServer
        from aiohttp import web
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False
    first = getattr(instance, "comfy_xdit_status_route", None)
    if first is not None:
        log.warning("Enable Multi-GPU: GET /xdit/status is already served by the plugin in %s; not adding it again "
                    "for %s", first, _plugin_folder())
        return False

    @instance.routes.get("/xdit/status")
    async def xdit_status(request):
        from .runtime import helper_group
        return web.json_response(status(helper_group.current_group()))

    instance.comfy_xdit_status_route = _plugin_folder()
    log.info("Enable Multi-GPU: monitoring at GET /xdit/status")
    return True


def _plugin_folder():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
