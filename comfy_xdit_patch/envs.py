"""Every environment variable the plugin reads: deployment settings of whoever starts ComfyUI, never of a workflow.

Read as ``envs.COMFY_XDIT_START_TIMEOUT`` (parsed at each read, so a test or a server owner can change them). A bad
value raises ValueError naming the variable and what it accepts, before any work.
Settings that change results or speed are node inputs instead (comfy_xdit_patch/node_options.py).
"""
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Variable:
    default: str
    parse: Callable[[str, str], Any]
    meaning: str


def _seconds(name, text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise ValueError(f"{name} must be a number of seconds above 0, not '{text}'.")
    return value


def _switch(name, text):
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1 or 0, not '{text}'.")


def _count(name, text):
    if not text.strip().isdigit():
        raise ValueError(f"{name} must be a whole number (0 = off), not '{text}'.")
    return int(text)


def _text(name, text):
    return text


def _host(name, text):
    """An address of this machine that helpers can reach (an IPv4 address or a host name): loopback by default. A
    wildcard would expose the ports on every interface while naming none that helpers could connect to."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(text))
    except (OSError, ValueError):
        raise ValueError(f"{name} must be this machine's IPv4 address (or host name) on the network its helpers "
                         f"share, e.g. 10.0.0.5, not '{text}'.") from None
    if address.version != 4:
        raise ValueError(f"{name}: only IPv4 addresses are supported, not '{text}'.")
    if address.is_unspecified:
        raise ValueError(f"{name}={text} would listen on every interface and names no address helpers can reach; "
                         "set it to this machine's address on the trusted network its helpers share.")
    return text


VARIABLES = {
    "COMFY_XDIT_HOST": Variable(
        "127.0.0.1", _host,
        "The address rank 0's control port, rendezvous store and collectives' bootstrap listen on. Loopback unless "
        "helpers run on other machines (launcher 'ray'); then this machine's address on a trusted, firewalled "
        "network."),
    "COMFY_XDIT_ALLOW_RAY": Variable(
        "0", _switch,
        "1: workflows may use launcher 'ray'. Off by default, so that no workflow can make the server start or join "
        "a Ray cluster on its own."),
    "COMFY_XDIT_RAY_ADDRESS": Variable(
        "", _text,
        "With launcher 'ray': the Ray cluster to join (e.g. 10.0.0.5:6379). Empty: start a Ray instance on this "
        "machine, on loopback, with token authentication."),
    "COMFY_XDIT_START_TIMEOUT": Variable(
        "180", _seconds,
        "Seconds the helpers have to start (connect, import ComfyUI, join the process group); past it the prompt "
        "runs on one GPU."),
    "COMFY_XDIT_COLLECTIVE_TIMEOUT": Variable(
        "300", _seconds,
        "Seconds a collective may wait for a stuck peer before the group is given up and the prompt finishes on one "
        "GPU."),
    "COMFY_XDIT_ABORT_TIMEOUT": Variable(
        "10", _seconds,
        "Seconds aborting a failed group's collectives may take; past it the group is set aside (prompts run on one "
        "GPU until ComfyUI restarts) rather than waited for."),
    "COMFY_XDIT_PRESTART_GPUS": Variable(
        "0", _count,
        "Start helpers for this many GPUs (CPU ranks with --cpu) when ComfyUI starts, so that the first prompt does "
        "not wait for them; a prompt whose node uses the same GPUs (launcher 'local') takes them over. 0: off."),
    "COMFY_XDIT_TRACE_DIR": Variable(
        "", _text, "Profiling: where profiled ranks write their traces (bench --gpu-busy)."),
    "COMFY_XDIT_PROFILE_HELPER": Variable(
        "", _text, "Profiling: 'first,count' of a helper's model calls to profile, e.g. '5,4' (bench --gpu-busy)."),
}


# Variables earlier versions read, and what replaced them: set, they would be ignored without a word.
RETIRED = {
    "COMFY_XDIT_CUDA_GRAPHS": "the node's cuda_graphs input",
    "COMFY_XDIT_EXCHANGE": "the node's exchange input",
    "COMFY_XDIT_EXCHANGE_PARTS": "the node's exchange_parts input",
    "COMFY_XDIT_SHARD_GATHERS": "the node's shard_gathers input",
    "COMFY_XDIT_HOST_PROFILE": "the benchmark's --host-profile option",
}
_warned = set()


def get(name):
    variable = VARIABLES[name]
    return variable.parse(name, os.environ.get(name, variable.default))


def __getattr__(name):
    if name in VARIABLES:
        return get(name)
    raise AttributeError(name)


def check_all():
    """Parses every variable: a bad value is named when the node runs, not in the middle of a prompt. A retired
    variable that is still set gets one warning naming what replaced it."""
    for name in VARIABLES:
        get(name)
    for name, replacement in RETIRED.items():
        if name in os.environ and name not in _warned:
            _warned.add(name)
            logging.getLogger(__name__).warning("Enable Multi-GPU: %s is no longer read; use %s.", name, replacement)
