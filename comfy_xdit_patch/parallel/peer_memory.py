"""Memory that the other processes of a group on one machine read and write directly.

Every member allocates the same number of bytes, and maps every other member's allocation into its own address
space: the symmetric Ulysses exchange writes q, k, v into its peers' receive buffers (parallel/symmetric.py), and
sharded weights are pulled from the peers' pieces by the copy engine (parallel/weight_shards.py), neither through a
communicator.

On CUDA the memory comes from the driver (``cuMemAlloc``) and travels as a CUDA IPC handle: torch's caching
allocator cannot export it when ComfyUI runs it on ``cudaMallocAsync`` (its default), and torch's symmetric memory
numbers its rendezvous with one counter per process, so a second group in ComfyUI's process (after a failure, or a
changed setting) would wait for keys that the new helpers never write. Here mapping is one ``all_gather_object`` of
the handles on the group's own communicator, as often as needed. On CPU ranks the memory is a file in /dev/shm,
removed as soon as every member has opened it.

The memory bypasses torch's allocator: ``held_bytes`` says how much this process holds, for memory reports.
"""
import contextlib
import ctypes
import logging
import math
import os
import secrets

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

ALIGNMENT = 256   # every region handed out starts on this many bytes (the widest vector loads need 16)
_held = {}        # device -> bytes this process allocated here and has not freed


def held_bytes(device):
    return _held.get(str(torch.device(device)), 0)


def memory_in_use(device):
    """(allocated, peak allocated) bytes of this process on a CUDA ``device``: torch's figures plus the peer memory
    it holds, which torch's allocator does not count."""
    peer = held_bytes(device)
    return torch.cuda.memory_allocated(device) + peer, torch.cuda.max_memory_allocated(device) + peer


def aligned(nbytes):
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def _current(device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def settle(device, group=None):
    """Collective: once this member's device has finished what it queued, wait for every member of ``group`` to get
    there too (NCCL's barrier runs on the current CUDA device, so ``device`` is made current for it)."""
    with _current(device):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier(group=group)


class _Driver:
    """The few CUDA driver calls that torch does not expose: allocate, export, import, free."""

    class IpcHandle(ctypes.Structure):
        _fields_ = [("reserved", ctypes.c_ubyte * 64)]   # bytes, zeros included (a c_char array stops at one)

    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        pointer, size = ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t
        for name, argtypes in (("cuMemAlloc_v2", [pointer, size]), ("cuMemFree_v2", [ctypes.c_uint64]),
                               ("cuIpcGetMemHandle", [ctypes.POINTER(self.IpcHandle), ctypes.c_uint64]),
                               ("cuIpcOpenMemHandle_v2", [pointer, self.IpcHandle, ctypes.c_uint]),
                               ("cuIpcCloseMemHandle", [ctypes.c_uint64])):
            getattr(self.lib, name).argtypes = argtypes
        self._contexts = {}
        self._check("cuInit", self.lib.cuInit(0))

    def _check(self, name, result):
        if result != 0:
            message = ctypes.c_char_p()
            self.lib.cuGetErrorString(result, ctypes.byref(message))
            raise RuntimeError(f"{name} failed: CUDA error {result} ({(message.value or b'?').decode()})")

    def _call(self, device, name, *args):
        """``name(*args)`` with ``device``'s primary context (the one torch uses) current on this thread."""
        context = self._contexts.get(device)
        if context is None:
            handle, context = ctypes.c_int(), ctypes.c_void_p()
            self._check("cuDeviceGet", self.lib.cuDeviceGet(ctypes.byref(handle), device))
            self._check("cuDevicePrimaryCtxRetain", self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), handle))
            self._contexts[device] = context
        self._check("cuCtxPushCurrent", self.lib.cuCtxPushCurrent_v2(context))
        try:
            self._check(name, getattr(self.lib, name)(*args))
        finally:
            popped = ctypes.c_void_p()
            self.lib.cuCtxPopCurrent_v2(ctypes.byref(popped))

    def allocate(self, device, nbytes):
        pointer = ctypes.c_uint64()
        self._call(device, "cuMemAlloc_v2", ctypes.byref(pointer), nbytes)
        return pointer.value

    def export(self, device, pointer):
        handle = self.IpcHandle()
        self._call(device, "cuIpcGetMemHandle", ctypes.byref(handle), pointer)
        return bytes(handle.reserved)

    def open(self, device, exported):
        pointer, handle = ctypes.c_uint64(), self.IpcHandle.from_buffer_copy(exported)
        # CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS: the peer's GPU becomes reachable from ours for this mapping.
        self._call(device, "cuIpcOpenMemHandle_v2", ctypes.byref(pointer), handle, 1)
        return pointer.value

    def close(self, device, pointer):
        self._call(device, "cuIpcCloseMemHandle", pointer)

    def free(self, device, pointer):
        self._call(device, "cuMemFree_v2", pointer)


class PeerMemory:
    """``nbytes`` on every member's device, every member's mapped in every member. Collective over ``group``
    (whose members are ``size`` ranks, this one being ``member``): every member constructs it at the same point.
    ``release`` frees it (not collective; ``close`` is the collective way)."""

    def __init__(self, nbytes, device, group, member, size):
        self.nbytes = aligned(max(nbytes, 1))
        self.device, self.group, self.member, self.size = device, group, member, size
        self._addresses = [None] * size
        self._storages = [None] * size   # CPU: the mapped files
        self._released = False
        own = exported = own_storage = problem = None
        try:
            if device.type == "cuda":
                driver = _Driver.get()
                own = driver.allocate(device.index, self.nbytes)
                try:
                    exported = driver.export(device.index, own)
                except BaseException:
                    driver.free(device.index, own)
                    own = None
                    raise
            else:
                exported = f"/dev/shm/comfy-xdit-{os.getpid()}-{secrets.token_hex(8)}"
                own_storage = torch.UntypedStorage.from_file(exported, True, self.nbytes)
                own = own_storage.data_ptr()
        except Exception as error:   # e.g. out of memory: the others still hear of it, in the gathers below
            problem = f"could not allocate {self.nbytes} bytes: {type(error).__name__}: {error}"
            exported = None
        if own is not None:
            _held[str(device)] = _held.get(str(device), 0) + self.nbytes
            self._addresses[member] = own
            self._storages[member] = own_storage
        # If a gather below fails, a peer may be gone and the device busy with the stuck collective, which freeing
        # would wait for: nothing is released then (a leak, not a hang).
        try:
            with _current(device):   # NCCL's object collectives run on the current CUDA device
                handles = [None] * size
                dist.all_gather_object(handles, exported, group=group)
                problem = problem or self._open_peers(handles)
                # Every member learns whether every other could allocate and map: all fail together instead of
                # some waiting in the next collective for members that gave up.
                problems = [None] * size
                dist.all_gather_object(problems, problem, group=group)
        finally:
            # CPU: every member opened every file before it entered the second gather; the names can go.
            if device.type != "cuda" and exported is not None:
                try:
                    os.unlink(exported)
                except FileNotFoundError:
                    pass
        failed = [f"rank {rank}: {text}" for rank, text in enumerate(problems) if text]
        if failed:
            self.release()
            raise RuntimeError("could not map the other GPUs' memory (" + "; ".join(failed) + ")")

    def _open_peers(self, handles):
        """Maps every peer's memory; returns why one could not be, or None."""
        try:
            for peer, handle in enumerate(handles):
                if peer == self.member or handle is None:   # a peer that could not allocate says so itself
                    continue
                if self.device.type == "cuda":
                    self._addresses[peer] = _Driver.get().open(self.device.index, handle)
                else:
                    self._storages[peer] = torch.UntypedStorage.from_file(handle, True, self.nbytes)
                    self._addresses[peer] = self._storages[peer].data_ptr()
        except Exception as error:   # e.g. no peer access between two GPUs
            return f"{type(error).__name__}: {error}"
        return None

    def address(self, member, offset=0):
        return self._addresses[member] + offset

    def tensor(self, member, dtype, shape, offset=0):
        """A tensor of ``member``'s memory at ``offset`` bytes, usable on this process's device (a peer's memory
        is reached over the link). It does not keep the memory alive: nothing may use it after ``release``."""
        nbytes = math.prod(shape) * dtype.itemsize
        if offset % ALIGNMENT or offset + nbytes > self.nbytes:
            raise ValueError(f"{nbytes} bytes at offset {offset} do not fit an aligned region of {self.nbytes}")
        storage = torch._C._construct_storage_from_data_pointer(self.address(member, offset), self.device, nbytes)
        return torch.empty(0, dtype=dtype, device=self.device).set_(storage, 0, tuple(shape))

    def close(self):
        """Collective: frees the memory once no member can be using it any more."""
        settle(self.device, self.group)
        self.release()

    def release(self):
        """Unmaps the peers' memory and frees this member's. Synchronizes the device (cuMemFree): never while a
        kernel that cannot finish may still run on it."""
        if self._released:
            return
        self._released = True
        if self._addresses[self.member] is not None:   # none where this member could not allocate
            _held[str(self.device)] -= self.nbytes
        if self.device.type == "cuda":
            driver = _Driver.get()
            for peer, address in enumerate(self._addresses):
                if address is None:
                    continue
                try:
                    if peer == self.member:
                        driver.free(self.device.index, address)
                    else:
                        driver.close(self.device.index, address)
                except RuntimeError:
                    log.warning("Enable Multi-GPU: could not free peer memory", exc_info=True)
        self._storages = [None] * self.size
        self._addresses = [None] * self.size
