"""Control channel between rank 0 and one helper: length-prefixed frames over TCP, after mutual authentication.

Small messages only (a model call's structure, never its tensors: those travel through torch.distributed).
Safe by construction:
- before any frame is read, each side proves the session secret on raw bytes (an HMAC-SHA256 challenge each way);
  a connection that does not is dropped, and the listener goes on accepting until every helper is in;
- frames are capped at ``MAX_FRAME`` bytes;
- frames are decoded by ``RestrictedUnpickler``: plain data and an allow-list of value types whose construction runs
  no code of the sender's choosing, and nothing may set attributes on a class or an enum member, so a frame cannot
  run code or rewrite rank 0's types, even from an authenticated peer on another host.
"""
import enum
import hashlib
import hmac
import io
import logging
import os
import pickle
import select
import selectors
import socket
import struct
import sys
import time

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!Q")
NONCE_BYTES = 32
SECRET_BYTES = 32
SECRET_VARIABLE = "COMFY_XDIT_SECRET"   # how rank 0 hands the session secret to the helpers it starts
MAX_FRAME = 64 << 20          # a FLUX call's structure is a few kB; a model's weight key list well under 1 MB
HANDSHAKE_TIMEOUT_S = 5.0     # a peer that has not proved the secret by then is dropped
FRAME_TIMEOUT_S = 60.0        # a frame that has begun to arrive must arrive whole within this
MAX_PENDING = 64              # unauthenticated connections held at once; more are closed at once


class ChannelClosed(ConnectionError):
    pass


class ProtocolError(ConnectionError):
    """The peer sent something outside the protocol: a failed proof, an oversize frame, a forbidden type."""


def new_secret():
    return os.urandom(SECRET_BYTES)


def _proof(secret, role, nonce):
    return hmac.new(secret, role + nonce, hashlib.sha256).digest()


# ----- decoding ------------------------------------------------------------------------------------------------
# (module, name) pairs a frame may name: value types whose construction runs no code of the sender's choosing, and
# costs no more than the frame's size (sets, frozensets and bytearrays have opcodes of their own in protocol 5).
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch", "device"),
    ("torch", "Size"),
    ("uuid", "UUID"),          # the conditionings' ids in transformer_options
    ("comfy_xdit_patch.config", "ParallelPlan"),
    ("comfy_xdit_patch.runtime.transport", "TensorSlot"),
} | {
    ("comfy_xdit_patch.runtime.messages", name)
    for name in ("Joined", "Prepare", "Setup", "Load", "Select", "Forward", "LoadVAE", "DecodeTiles", "Stats", "Exit",
                 "Reply")
}
# Enums (ComfyUI's command-line choices, GGUF's quantization types) from modules the process already imported, or
# from ComfyUI's command-line module, which a helper decodes before it imports ComfyUI.
_ENUM_MODULE_PREFIXES = ("comfy.", "comfy_xdit_patch.", "gguf.")
_ENUM_MODULES_TO_IMPORT = ("comfy.cli_args",)


_DTYPE_NAMES = frozenset((
    "float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e8m0fnu", "float4_e2m1fn_x2", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "bool", "complex64", "complex128"))


class RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler, which lets one step (BUILD) be checked: a frame could otherwise set attributes on an
    allowed class or on an enum member, rewriting them for the whole process."""
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return getattr(_module(module), name)
        if module == "torch" and name in _DTYPE_NAMES:
            import torch
            return getattr(torch, name)
        if module in _ENUM_MODULES_TO_IMPORT:
            _module(module)
        if module.startswith(_ENUM_MODULE_PREFIXES) and module in sys.modules and "." not in name:
            value = getattr(sys.modules[module], name, None)
            if isinstance(value, type) and issubclass(value, enum.Enum) and value.__module__ == module and \
                    len(value.__members__):
                return value
        raise ProtocolError(f"a control message names '{module}.{name}', which is not a plain value type")

    def load_build(self):
        target = self.stack[-2]
        if isinstance(target, (type, enum.Enum)):
            raise ProtocolError(f"a control message sets attributes on {target!r}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


def _module(name):
    __import__(name)
    return sys.modules[name]


def decode(payload):
    return RestrictedUnpickler(io.BytesIO(payload)).load()


def encode(obj):
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


# ----- the channel ---------------------------------------------------------------------------------------------
class Channel:
    def __init__(self, sock):
        self.sock = sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_bytes(self, payload):
        if len(payload) > MAX_FRAME:
            raise ValueError(f"a control message of {len(payload)} bytes is over the {MAX_FRAME}-byte limit")
        self.sock.sendall(_LENGTH.pack(len(payload)) + payload)

    def send(self, obj):
        self.send_bytes(encode(obj))

    def _read(self, n, deadline=None):
        chunks = []
        while n:
            if deadline is not None:
                self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ChannelClosed("the other side closed the control channel")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self, timeout=None):
        """The next message. ``timeout`` bounds the wait for it to begin (TimeoutError, nothing consumed); a frame
        that has begun must then arrive whole within FRAME_TIMEOUT_S, so a call that timed out never leaves half a
        frame behind."""
        if not select.select([self.sock], [], [], timeout)[0]:
            raise TimeoutError("no control message arrived in time")
        deadline = time.monotonic() + FRAME_TIMEOUT_S
        try:
            (length,) = _LENGTH.unpack(self._read(_LENGTH.size, deadline))
            if length > MAX_FRAME:
                raise ProtocolError(f"the peer announced a {length}-byte control message (limit {MAX_FRAME})")
            return decode(self._read(length, deadline))
        except TimeoutError as e:
            raise ChannelClosed("a control message stopped arriving midway") from e
        finally:
            self.sock.settimeout(None)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect(address, secret, timeout=HANDSHAKE_TIMEOUT_S):
    """Helpers: connect to rank 0 and prove the secret both ways; raises ProtocolError if rank 0 cannot."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.settimeout(timeout)
        channel = Channel(sock)
        challenge = channel._read(NONCE_BYTES)
        own_nonce = os.urandom(NONCE_BYTES)
        sock.sendall(_proof(secret, b"helper", challenge) + own_nonce)
        if not hmac.compare_digest(channel._read(hashlib.sha256().digest_size), _proof(secret, b"rank0", own_nonce)):
            raise ProtocolError("the control port did not prove the session secret")
        sock.settimeout(None)
        return channel
    except BaseException:
        sock.close()
        raise


class Acceptor:
    """Rank 0's listener: accepts connections and authenticates several at once, so that a stray or hostile
    connection (a port scanner, a health check, a peer without the secret) is dropped without delaying the helpers."""

    _PROOF = hashlib.sha256().digest_size

    def __init__(self, listener, secret):
        self.listener, self.secret = listener, secret
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.pending = {}    # socket -> [challenge, bytes received, deadline]
        self.dropped = 0

    def accept(self, timeout):
        """The next authenticated Channel, or None after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            for sock, (_, _, deadline) in list(self.pending.items()):
                if now > deadline:
                    self._drop(sock, "did not prove the session secret in time")
            remaining = end - now
            if remaining <= 0:
                return None
            for key, _ in self.selector.select(min(remaining, 0.1)):
                if key.fileobj is self.listener:
                    self._take()
                    continue
                channel = self._advance(key.fileobj)
                if channel is not None:
                    return channel

    def _take(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:   # nothing to accept after all, or out of file descriptors: the helpers retry their connect
            return
        if len(self.pending) >= MAX_PENDING:
            sock.close()
            self.dropped += 1
            return
        challenge = os.urandom(NONCE_BYTES)
        try:
            sock.setblocking(True)
            sock.settimeout(1.0)
            sock.sendall(challenge)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self.pending[sock] = [challenge, b"", time.monotonic() + HANDSHAKE_TIMEOUT_S]
        self.selector.register(sock, selectors.EVENT_READ)

    def _advance(self, sock):
        challenge, received, _ = state = self.pending[sock]
        try:
            chunk = sock.recv(self._PROOF + NONCE_BYTES - len(received))
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(sock, "closed before proving the session secret")
            return None
        state[1] = received = received + chunk
        if len(received) < self._PROOF + NONCE_BYTES:
            return None
        proof, nonce = received[:self._PROOF], received[self._PROOF:]
        if not hmac.compare_digest(proof, _proof(self.secret, b"helper", challenge)):
            self._drop(sock, "failed the session-secret challenge")
            return None
        self.selector.unregister(sock)
        del self.pending[sock]
        try:
            sock.setblocking(True)
            sock.settimeout(1.0)
            sock.sendall(_proof(self.secret, b"rank0", nonce))
            sock.settimeout(None)
        except OSError:
            sock.close()
            return None
        return Channel(sock)

    def _drop(self, sock, why):
        self.dropped += 1
        try:
            peer = sock.getpeername()
        except OSError:
            peer = "?"
        log.warning("Enable Multi-GPU: dropped a connection to the control port from %s: it %s", peer, why)
        self.selector.unregister(sock)
        del self.pending[sock]
        sock.close()

    def close(self):
        for sock in list(self.pending):
            self.selector.unregister(sock)
            sock.close()
        self.pending.clear()
        self.selector.close()
        self.listener.close()


def listen(host="127.0.0.1"):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen()
    return listener
