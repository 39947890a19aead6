"""Control channel between rank 0 and one helper: length-prefixed pickles over a loopback TCP socket.

Small messages only (a model call's structure, never its tensors). The helper proves it was started by this rank 0
with a random token; the socket listens on 127.0.0.1 only, unless a multi-machine setup names rank 0's address.
"""
import hmac
import pickle
import socket
import struct

_LENGTH = struct.Struct("!Q")


class ChannelClosed(ConnectionError):
    pass


class Channel:
    def __init__(self, sock):
        self.sock = sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_bytes(self, payload):
        self.sock.sendall(_LENGTH.pack(len(payload)) + payload)

    def send(self, obj):
        self.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

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
            return pickle.loads(self._read(length))
        finally:
            self.sock.settimeout(None)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect(address, token):
    sock = socket.create_connection(address)
    channel = Channel(sock)
    channel.send(token)
    return channel


def accept(listener, token, timeout):
    """Accepts one connection that presents ``token``; raises socket.timeout after ``timeout`` seconds."""
    listener.settimeout(timeout)
    sock, _ = listener.accept()
    channel = Channel(sock)
    if not hmac.compare_digest(channel.recv(timeout=timeout), token):
        channel.close()
        raise PermissionError("a process without the session token connected to the control port")
    return channel


def listen(host="127.0.0.1"):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen()
    return listener
