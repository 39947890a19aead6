"""Nothing runs for an unauthenticated peer: the control port proves the session secret on raw bytes before it
decodes anything, caps frames, decodes only plain data, and keeps accepting past stray connections."""
import logging
import os
import pickle
import socket
import struct
import threading

import pytest

from comfy_env import relative_error
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import channel as control
from comfy_xdit_patch.runtime import helper_group as helpers
from comfy_xdit_patch.runtime import launchers
from test_faults import fresh_helpers, sample  # noqa: F401  (fixture)


class WritesAFile:
    """Unpickling this runs code: it writes ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('pwned')",)


def code_running_frame(path):
    payload = pickle.dumps(WritesAFile(path))
    return struct.pack("!Q", len(payload)) + payload


def test_the_restricted_decoder_refuses_a_callable(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(control.ProtocolError, match="builtins.exec"):
        control.decode(pickle.dumps(WritesAFile(str(marker))))
    assert not marker.exists()


def test_the_restricted_decoder_keeps_plain_data():
    import torch
    from comfy_xdit_patch.config import ParallelPlan
    from comfy_xdit_patch.runtime.transport import TensorSlot
    message = ("forward", {"x": TensorSlot(0), "shape": torch.Size([1, 2]), "dtype": torch.bfloat16,
                           "device": torch.device("cpu"), "ids": {3, 4}, "plan": ParallelPlan("cpu", (None, None), 2, 1)})
    assert control.decode(control.encode(message)) == message


def _pair(secret, peer_secret=None):
    """An Acceptor and a client socket that answers its challenge with ``peer_secret``."""
    acceptor = control.Acceptor(control.listen(), secret)
    result = {}

    def client():
        try:
            result["channel"] = control.connect(acceptor.listener.getsockname(), peer_secret or secret)
        except Exception as e:   # noqa: BLE001  (the test reads it)
            result["error"] = e
    thread = threading.Thread(target=client)
    thread.start()
    return acceptor, thread, result


def test_a_peer_with_the_secret_is_accepted_and_both_sides_authenticate():
    secret = control.new_secret()
    acceptor, thread, result = _pair(secret)
    channel = acceptor.accept(timeout=5)
    thread.join(5)
    assert channel is not None and "channel" in result
    result["channel"].send(("hello", 1))
    assert channel.recv(timeout=5) == ("hello", 1)
    acceptor.close()


def test_a_peer_without_the_secret_is_dropped_and_learns_nothing():
    acceptor, thread, result = _pair(control.new_secret(), peer_secret=control.new_secret())
    assert acceptor.accept(timeout=1.0) is None
    thread.join(5)
    assert acceptor.dropped == 1
    assert isinstance(result.get("error"), (control.ProtocolError, ConnectionError, OSError))
    acceptor.close()


def test_rank0_that_cannot_prove_the_secret_is_refused_by_the_helper():
    """A helper told to connect to a port someone else holds does not take orders from it."""
    impostor = control.listen()

    def serve():
        sock, _ = impostor.accept()
        sock.sendall(os.urandom(control.NONCE_BYTES))
        sock.recv(64)
        sock.sendall(os.urandom(32))   # cannot compute the proof
        sock.close()
    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(control.ProtocolError, match="did not prove"):
        control.connect(impostor.getsockname(), control.new_secret())
    impostor.close()


def test_an_oversize_frame_is_refused_before_it_is_read():
    left, right = socket.socketpair()
    channel = control.Channel.__new__(control.Channel)
    channel.sock = right
    left.sendall(struct.pack("!Q", control.MAX_FRAME + 1))
    with pytest.raises(control.ProtocolError, match="limit"):
        channel.recv(timeout=5)
    left.close()
    right.close()


def test_stray_and_hostile_connections_during_start_up_cost_nothing(tiny_flux, fresh_helpers, monkeypatch, caplog,
                                                                     tmp_path):
    """While the helpers start: a code-running pickle, a port scanner, garbage, an oversize frame header and a silent
    connection all hit the control port first. No code runs, each is dropped, and the helpers still start."""
    marker = tmp_path / "pwned"
    original_spawn = launchers.LocalLauncher.spawn
    attackers = []

    def spawn_after_attacks(self, rank, arguments, helper_env):
        if rank == 1:
            host, port = arguments[arguments.index("--control") + 1].rsplit(":", 1)
            address = (host, int(port))
            for payload in (code_running_frame(str(marker)), b"", b"GET / HTTP/1.0\r\n\r\n",
                            struct.pack("!Q", 1 << 62), None):
                sock = socket.create_connection(address)
                if payload:
                    sock.sendall(payload)
                if payload is not None:
                    sock.shutdown(socket.SHUT_WR)
                attackers.append(sock)   # the silent one stays open: the helpers must not wait behind it
        return original_spawn(self, rank, arguments, helper_env)

    monkeypatch.setattr(launchers.LocalLauncher, "spawn", spawn_after_attacks)
    expected = sample(tiny_flux, steps=2)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = sample(enable_multigpu(tiny_flux, gpus=3, parallelism="ring"), steps=2)
    for sock in attackers:
        sock.close()
    assert not marker.exists(), "a pickle from an unauthenticated peer ran code"
    group = helpers.current_group()
    assert group is not None and group.alive() and group.weight_syncs == 1, "the helpers did not start"
    assert relative_error(got, expected) <= 1e-5
    dropped = [r for r in caplog.records if "dropped a connection to the control port" in r.getMessage()]
    assert len(dropped) >= 4
    assert not any("one GPU" in r.getMessage() for r in caplog.records)


def test_the_secret_never_appears_on_a_helper_command_line(tiny_flux, fresh_helpers):
    """Other users of the machine can read every process's command line, not its environment."""
    import psutil
    sample(enable_multigpu(tiny_flux, gpus=2, parallelism="ring"), steps=1)
    helper = psutil.Process(helpers.current_group().processes[1].pid)
    secret = helper.environ()[control.SECRET_VARIABLE]
    assert len(secret) == 2 * control.SECRET_BYTES and secret not in " ".join(helper.cmdline())


def test_the_decoder_refuses_to_rewrite_a_class_and_to_build_costly_values():
    """An authenticated peer still cannot set attributes on an allowed class, nor name a builder whose cost grows
    beyond the frame (range, bytearray): the frame is refused."""
    from comfy_xdit_patch.config import ParallelPlan
    rewrite = (b"\x80\x04ccomfy_xdit_patch.config\nParallelPlan\nN}\x8c\x07backend\x8c\x04evils\x86b.")
    with pytest.raises(control.ProtocolError, match="sets attributes"):
        control.decode(rewrite)
    assert ParallelPlan("cpu", (None, None), 1, 2).backend == "gloo"
    huge = b"\x80\x04cbuiltins\nrange\n\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40\x85R."
    with pytest.raises(control.ProtocolError, match="builtins.range"):
        control.decode(huge)


def test_a_frame_split_across_a_timeout_is_read_whole():
    """A wait that times out consumes nothing; a frame that has begun is read to its end."""
    left, right = socket.socketpair()
    channel = control.Channel.__new__(control.Channel)
    channel.sock = right
    with pytest.raises(TimeoutError):
        channel.recv(timeout=0.1)
    payload = control.encode(("forward", list(range(100))))
    frame = struct.pack("!Q", len(payload)) + payload
    left.sendall(frame[:5])

    def rest():
        import time
        time.sleep(0.3)
        left.sendall(frame[5:])
    threading.Thread(target=rest).start()
    assert channel.recv(timeout=0.1) == ("forward", list(range(100)))
    left.close()
    right.close()


def test_retired_variables_are_named_and_host_names_are_taken(monkeypatch, caplog):
    from comfy_xdit_patch import envs
    monkeypatch.setenv("COMFY_XDIT_CUDA_GRAPHS", "0")
    monkeypatch.setattr(envs, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        envs.check_all()
    assert any("COMFY_XDIT_CUDA_GRAPHS is no longer read; use the node's cuda_graphs input" in r.getMessage()
               for r in caplog.records)
    monkeypatch.setenv("COMFY_XDIT_HOST", "localhost")
    assert envs.COMFY_XDIT_HOST == "localhost"
    monkeypatch.setenv("COMFY_XDIT_HOST", "0.0.0.0")
    with pytest.raises(ValueError, match="every interface"):
        envs.check_all()
