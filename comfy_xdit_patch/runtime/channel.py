"""Control channel between rank 0 and one helper: length-prefixed frames over TCP, after mutual authentication.

Small messages only (a model call's structure, never its tensors: those travel through torch.distributed).
Safe by construction:
- before any frame is read, each side proves the session secret on raw bytes (an HMAC-SHA256 challenge each way);
  a connection that does not is dropped, and the listener goes on accepting until every helper is in;
- frames are capped at ``MAX_FRAME`` bytes;
- frames are decoded by ``RestrictedUnpickler``: plain data and an allow-list of value types, never a callable, so a
  frame cannot run code even from an authenticated peer on another host.
"""
import enum
import hashlib
import hmac
import io
import logging
import os
import pickle
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


class ChannelClosed(ConnectionError):
    pass


class ProtocolError(ConnectionError):
    """The peer sent something outside the protocol: a failed proof, an oversize frame, a forbidden type."""


def new_secret():
    return os.urandom(SECRET_BYTES)


def _proof(secret, role, nonce):
    return hmac.new(secret, role + nonce, hashlib.sha256).digest()


# ----- decoding ------------------------------------------------------------------------------------------------
# (module, name) pairs a frame may name: value types whose construction runs no code of the sender's choosing.
_ALLOWED_GLOBALS = {
    ("builtins", name) for name in ("set", "frozenset", "complex", "slice", "range", "bytearray")
} | {
    ("collections", "OrderedDict"),
    ("torch", "device"),
    ("torch", "Size"),
    ("uuid", "UUID"),          # the conditionings' ids in transformer_options
    ("comfy_xdit_patch.config", "ParallelPlan"),
    ("comfy_xdit_patch.runtime.transport", "TensorSlot"),
} | {
    ("comfy_xdit_patch.runtime.messages", name)
    for name in ("Joined", "Prepare", "Setup", "Load", "Forward", "Stats", "Exit", "Reply")
}
# Enums (ComfyUI's command-line choices, GGUF's quantization types) from modules the process already imported, or
# from ComfyUI's command-line module, which a helper decodes before it imports ComfyUI.
_ENUM_MODULE_PREFIXES = ("comfy.", "comfy_xdit_patch.", "gguf.")
_ENUM_MODULES_TO_IMPORT = ("comfy.cli_args",)


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return getattr(_module(module), name)
        if module == "torch" and "." not in name:
            import torch
            value = getattr(torch, name, None)
            if isinstance(value, torch.dtype):
                return value
        if module in _ENUM_MODULES_TO_IMPORT:
            _module(module)
        if module.startswith(_ENUM_MODULE_PREFIXES) and module in sys.modules and "." not in name:
            value = getattr(sys.modules[module], name, None)
            if isinstance(value, type) and issubclass(value, enum.Enum):
                return value
        raise ProtocolError(f"a control message names '{module}.{name}', which is not a plain value type")


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

    def _read(self, n):
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ChannelClosed("the other side closed the control channel")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self, timeout=None):
        self.sock.settimeout(timeout)
        try:
            (length,) = _LENGTH.unpack(self._read(_LENGTH.size))
            if length > MAX_FRAME:
                raise ProtocolError(f"the peer announced a {length}-byte control message (limit {MAX_FRAME})")
            return decode(self._read(length))
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
        except (BlockingIOError, InterruptedError):
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
