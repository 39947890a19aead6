"""What the user asked for, checked against the machine and the model before any work starts."""
import dataclasses
import itertools
import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PARALLELISMS = ("auto", "ulysses", "ring", "usp")
SCHEDULINGS = ("round_robin", "least_loaded", "weighted_round_robin", "adaptive")
LAUNCHERS = ("local", "ray")
SHARD_GATHERS = ("auto", "pull", "all-gather")
EXCHANGES = ("auto", "nccl", "symmetric", "copy-engine")
PEER_EXCHANGES = ("symmetric", "copy-engine")   # through peer memory: CUDA GPUs of one machine, Triton's barrier
CPU_DEFAULT_RANKS = 2


@dataclass(frozen=True)
class MultiGPUOptions:
    """Everything the user chose on the node, as one value from the node to the plan (see node_options.py)."""
    gpus: int = 0
    parallelism: str = "auto"
    ulysses_degree: int = 0
    ring_degree: int = 0
    sequence_degree: int = 0
    scheduling: str = "round_robin"
    shard_weights: bool = False
    launcher: str = "local"
    exchange: str = "auto"          # how the Ulysses all-to-all moves q, k, v and the output (EXCHANGES)
    exchange_parts: int = 2         # copy-engine: head parts pipelined against the attention
    shard_gathers: str = "auto"     # shard_weights: how a block's weights are gathered (SHARD_GATHERS)
    cuda_graphs: bool = True        # replay each step as a CUDA graph where it is safe (runtime/step_graphs.py)


@dataclass(frozen=True)
class ParallelPlan:
    """A validated layout: which device every rank uses and how the sequence-parallel degrees split them."""
    device_type: str            # "cuda" or "cpu"
    device_indices: tuple       # per rank: CUDA device index, or None on the CPU
    ulysses_degree: int
    ring_degree: int
    scheduling: str = field(default="round_robin", compare=False)   # rank 0's choice alone: no helper restart
    launcher: str = "local"     # "ray": helpers are Ray actors, possibly on other machines
    shard_weights: bool = False  # each rank holds 1/N of every block's weights (parallel/weight_shards.py)
    shard_gathers: str = "pull"  # with shard_weights: "pull" (copies from peer memory) or "all-gather" (a collective)
    ulysses_exchange: str = "nccl"  # "symmetric": parallel/symmetric.py instead of NCCL's all-to-all (Ulysses > 1 only)
    exchange_parts: int = 1         # "copy-engine": head parts pipelined against the attention (parallel/copy_engine.py)
    cuda_graphs: bool = field(default=True, compare=False)   # rank 0 decides per step: no helper restart
    # What the user asked for, where the plan may differ: "auto" falls back quietly, an explicit choice fails loudly.
    requested_exchange: str = field(default="auto", compare=False)
    requested_gathers: str = field(default="auto", compare=False)

    @property
    def world_size(self):
        return len(self.device_indices)

    @property
    def sp_degree(self):
        return self.ulysses_degree * self.ring_degree

    @property
    def replicas(self):
        """Sequence-parallel groups: batch items and CFG branches are placed on them by ``scheduling``."""
        return self.world_size // self.sp_degree

    @property
    def backend(self):
        return "nccl" if self.device_type == "cuda" else "gloo"

    def describe(self):
        if self.launcher == "ray":
            where = ("CPU ranks" if self.device_type == "cpu" else "GPUs") + " via Ray"
        else:
            where = "CPU ranks" if self.device_type == "cpu" else "GPUs " + ",".join(map(str, self.device_indices))
        layout = f"ulysses {self.ulysses_degree} x ring {self.ring_degree}"
        if self.shard_weights:
            layout += ", weights sharded" + (" (all-gathered)" if self.shard_gathers == "all-gather" else "")
        if self.ulysses_exchange != "nccl":
            layout += f", {self.ulysses_exchange} exchange"
            if self.ulysses_exchange == "copy-engine":
                layout += f" in {self.exchange_parts} head part{'s' if self.exchange_parts > 1 else ''}"
        if self.replicas > 1:
            return f"{self.world_size} {where} ({self.replicas} groups of {layout}, {self.scheduling})"
        return f"{self.world_size} {where} ({layout})"


def for_any_model(options, model_name, families):
    """The options for a model without a sequence-parallel adapter, which runs CFG/batch-parallel (every GPU a group
    of its own), or ValueError naming the setting to change."""
    reason = (f"{model_name} has no sequence-parallel adapter (Enable Multi-GPU splits the tokens of {families}); it "
              "runs CFG/batch-parallel, placing the CFG branches and batch items on the GPUs.")
    if options.parallelism != "auto":
        raise ValueError(f"{reason} Set parallelism to auto.")
    if options.ulysses_degree or options.ring_degree:
        raise ValueError(f"{reason} Set ulysses_degree and ring_degree to 0.")
    if options.sequence_degree > 1:
        raise ValueError(f"{reason} Set sequence_degree to 0.")
    if options.shard_weights:
        raise ValueError(f"{reason} shard_weights needs a family adapter that names the transformer blocks: turn "
                         "shard_weights off.")
    return dataclasses.replace(options, sequence_degree=1)


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_degrees(world_size, heads, parallelism, ulysses_degree=0, ring_degree=0):
    """Returns ``(ulysses_degree, ring_degree)`` for ``world_size`` sequence-parallel ranks or raises ValueError
    naming the fix. Degrees set with ``auto`` are honoured as with ``usp``; with ``ulysses`` or ``ring`` a degree
    must agree with that choice."""
    if parallelism not in PARALLELISMS:
        raise ValueError(f"parallelism must be one of {', '.join(PARALLELISMS)}, not '{parallelism}'.")
    for name, value in (("ulysses_degree", ulysses_degree), ("ring_degree", ring_degree)):
        if value < 0:
            raise ValueError(f"{name} must be 0 (automatic) or a positive count, not {value}.")
    working = [d for d in _divisors(world_size) if heads % d == 0]
    if parallelism in ("ring", "ulysses"):
        wanted = (1, world_size) if parallelism == "ring" else (world_size, 1)
        for name, value, agrees in (("ulysses_degree", ulysses_degree, wanted[0]),
                                    ("ring_degree", ring_degree, wanted[1])):
            if value and value != agrees:
                raise ValueError(
                    f"parallelism '{parallelism}' runs ulysses {wanted[0]} x ring {wanted[1]} over the "
                    f"{world_size} ranks, but {name} is {value}. Set parallelism to 'usp' to combine the two, or "
                    f"{name} to 0.")
        if parallelism == "ring":
            return wanted
        if heads % world_size:
            raise ValueError(
                f"Ulysses over {world_size} ranks needs the head count ({heads}) to divide by {world_size}. "
                f"Use gpus in {[d for d in _divisors(heads) if d > 1]}, or parallelism 'usp' or 'ring'.")
        return wanted
    if ulysses_degree or ring_degree:   # usp, or auto with degrees set: exactly those degrees
        return _explicit_degrees(world_size, heads, working, ulysses_degree, ring_degree)
    if parallelism == "usp":
        hybrid = [d for d in working if 1 < d < world_size]
        if hybrid:
            return max(hybrid), world_size // max(hybrid)
    # auto (and usp without degrees): Ulysses over as many ranks as the heads allow, ring for whatever remains.
    # On 2xH200 at 1024^2 Ulysses 2 measured 1.35x (five repeats 1.31-1.40x) against ring 2's 1.14x (1.05-1.28x), and
    # both 1.78x at 2048^2 (docs/benchmarks.md); one all-to-all group also needs no extra point-to-point communicators.
    return max(working), world_size // max(working)


def _explicit_degrees(world_size, heads, working, ulysses_degree, ring_degree):
    """The degrees a user set (0: the one that completes the other), checked against the ranks and the heads."""
    pairs = ", ".join(f"{u} x {world_size // u}" for u in working)
    if ulysses_degree and ring_degree:
        if ulysses_degree * ring_degree != world_size:
            raise ValueError(f"ulysses_degree {ulysses_degree} x ring_degree {ring_degree} must equal the number of "
                             f"ranks ({world_size}). Pairs (ulysses x ring) that work here: {pairs}.")
    for name, value in (("ulysses_degree", ulysses_degree), ("ring_degree", ring_degree)):
        if value and world_size % value:
            raise ValueError(f"{name} {value} does not divide the {world_size} ranks; use one of "
                             f"{_divisors(world_size)} (pairs ulysses x ring that work here: {pairs}).")
    ulysses = ulysses_degree or world_size // ring_degree
    if heads % ulysses:
        if ulysses_degree:
            raise ValueError(f"ulysses_degree {ulysses} does not divide the model's {heads} heads; "
                             f"degrees that work here: {working}.")
        raise ValueError(f"ring_degree {ring_degree} leaves Ulysses groups of {ulysses} ranks, which does not divide "
                         f"the model's {heads} heads; ring degrees that work here: "
                         f"{sorted(world_size // u for u in working)}.")
    return ulysses, world_size // ulysses


def resolve_plan(options, heads, main_device, visible_cuda):
    """The plan for ``options`` (MultiGPUOptions). ``main_device`` is the torch.device ComfyUI runs on (rank 0);
    ``visible_cuda`` the CUDA device count. ``sequence_degree`` (0 = all ranks) is the size of one sequence-parallel
    group; with fewer than all ranks the rest form more groups, and batch items / CFG branches are placed on the
    groups by ``scheduling``."""
    gpus, parallelism, launcher, scheduling = options.gpus, options.parallelism, options.launcher, options.scheduling
    sequence_degree, shard_weights = options.sequence_degree, options.shard_weights
    if gpus < 0:
        raise ValueError("gpus must be 0 (every visible GPU) or a positive count.")
    if main_device.type == "cpu":
        world = gpus or CPU_DEFAULT_RANKS
        indices = (None,) * world
        device_type = "cpu"
    elif main_device.type == "cuda" and launcher == "ray":
        if not gpus:
            raise ValueError("With launcher 'ray', set gpus to the total number of GPUs to use across the cluster.")
        world, device_type = gpus, "cuda"
        # Rank 0 uses ComfyUI's GPU; every helper uses the one GPU Ray gives its actor.
        indices = (main_device.index or 0,) + (0,) * (world - 1)
    elif main_device.type == "cuda":
        world = gpus or visible_cuda
        if world > visible_cuda:
            raise ValueError(f"gpus={gpus} but only {visible_cuda} CUDA device(s) are visible "
                             f"(indices 0..{visible_cuda - 1}). Lower gpus, or set gpus=0 for all of them; "
                             f"check CUDA_VISIBLE_DEVICES and ComfyUI's --cuda-device.")
        main = main_device.index if main_device.index is not None else 0
        indices = (main,) + tuple(i for i in range(visible_cuda) if i != main)[:world - 1]
        device_type = "cuda"
    else:
        raise ValueError(f"Enable Multi-GPU supports CUDA GPUs and CPU ranks; ComfyUI runs on '{main_device.type}'.")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, not '{launcher}'.")
    if scheduling not in SCHEDULINGS:
        raise ValueError(f"scheduling must be one of {', '.join(SCHEDULINGS)}, not '{scheduling}'.")
    degree = sequence_degree or world
    if degree < 1 or world % degree:
        raise ValueError(f"sequence_degree {sequence_degree} must divide the {world} ranks into equal groups; "
                         f"use one of {_divisors(world)}.")
    ulysses, ring = choose_degrees(degree, heads, parallelism, options.ulysses_degree, options.ring_degree)
    _check_choice("exchange", options.exchange, EXCHANGES)
    _check_choice("shard_gathers", options.shard_gathers, SHARD_GATHERS)
    gathers = shard_gathers_setting(options.shard_gathers, launcher) if shard_weights else "pull"
    exchange = options.exchange
    if exchange == "auto":
        exchange = _automatic_exchange(device_type, launcher, ulysses)
    elif exchange in PEER_EXCHANGES:
        if device_type != "cuda" or launcher != "local":
            raise ValueError(f"exchange '{exchange}' needs the CUDA GPUs of one machine (launcher 'local'); set "
                             "exchange to auto (or nccl) for CPU ranks or Ray.")
        from .parallel.symmetric import unavailable_reason
        reason = unavailable_reason()
        if reason:
            raise ValueError(f"exchange '{exchange}': {reason}; set exchange to auto to use NCCL.")
    if ulysses == 1:   # ring only: no Ulysses exchange to make
        exchange = "nccl"
    parts = exchange_parts_setting(options.exchange_parts, heads // ulysses) if exchange == "copy-engine" else 1
    return ParallelPlan(device_type, indices, ulysses, ring, scheduling, launcher, bool(shard_weights), gathers,
                        exchange, parts, bool(options.cuda_graphs), options.exchange, options.shard_gathers)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(repr(c) for c in choices)}, not '{value}'.")


def shard_gathers_setting(value, launcher="local"):
    """How ``shard_weights`` rebuilds a block. ``pull`` (auto where the ranks share a machine): copies from the
    peers' pieces in peer memory, by the copy engine on GPUs (parallel/weight_shards.py). ``all-gather``: NCCL's
    (gloo's) all-gather on the attention's communicator, where a block's exchange waits behind the next block's
    gather; the only way between machines (Ray), and where /dev/shm is missing for CPU ranks."""
    shared_memory = launcher == "local" and os.path.isdir("/dev/shm")
    if value == "pull" and not shared_memory:
        raise ValueError("shard_gathers 'pull' needs every rank on this machine (launcher 'local', with /dev/shm); "
                         "set it to auto or all-gather.")
    if value == "auto":
        return "pull" if shared_memory else "all-gather"
    return value


def exchange_parts_setting(value, local_heads):
    """For the copy-engine exchange: in how many head parts each member's attention runs, part j + 1 crossing while
    part j is computed; it must divide the heads each member computes (``local_heads``)."""
    fits = _divisors(local_heads)
    if value not in fits:
        raise ValueError(f"exchange_parts must divide the {local_heads} heads each GPU computes: one of "
                         f"{', '.join(map(str, fits))}, not {value}.")
    return value


def _automatic_exchange(device_type, launcher, ulysses_degree):
    """Symmetric for Ulysses groups of two local GPUs, where it was measured faster than NCCL's all-to-all on 2×H200
    (docs/benchmarks.md, "What each lever bought"). Larger groups keep NCCL until measured; CPU ranks and Ray always
    use it."""
    if device_type != "cuda" or launcher != "local" or ulysses_degree != 2:
        return "nccl"
    from .parallel.symmetric import unavailable_reason
    return "nccl" if unavailable_reason() else "symmetric"


# With sharded weights a helper holds its 1/N of the blocks, the ~1% outside them and two gathered blocks (a FLUX
# double block is ~3% of the model).
SHARDED_EXTRA_FRACTION = 0.08


def check_peer_access(plan, can_access):
    """Peer memory needs the GPUs that share it to reach each other (NVLink or PCIe peer access): the symmetric
    exchange every pair of a Ulysses group, pulled weight pieces every pair. ``can_access(a, b)`` is
    torch.cuda.can_device_access_peer. Returns the plan to run (see ``_fall_back``)."""
    if plan.device_type != "cuda":
        return plan
    if plan.ulysses_exchange in PEER_EXCHANGES:
        missing = _missing_access([plan.device_indices[first:first + plan.ulysses_degree]
                                   for first in range(0, plan.world_size, plan.ulysses_degree)], can_access)
        if missing:
            plan = _fall_back(plan, "exchange", plan.requested_exchange, plan.ulysses_exchange,
                              f"GPU {missing[0]} cannot access GPU {missing[1]}'s memory (no peer access between them)",
                              "NCCL's exchange", ulysses_exchange="nccl", exchange_parts=1)
    if plan.shard_weights and plan.shard_gathers == "pull":
        missing = _missing_access([plan.device_indices], can_access)
        if missing:
            plan = _fall_back(plan, "shard_gathers", plan.requested_gathers, "pull", f"GPU {missing[0]} cannot access GPU {missing[1]}'s memory (no peer access "
                              "between them)", "the all-gather", shard_gathers="all-gather")
    return plan


def _missing_access(groups, can_access):
    """The first (a, b) of GPUs in one of ``groups`` where a cannot access b's memory, or None."""
    for indices in groups:
        for a, b in itertools.permutations(indices, 2):
            if not can_access(a, b):
                return a, b
    return None


def check_exchange_kernels(plan, build_problem):
    """The symmetric exchange's Triton kernels are compiled on first use, which needs a C compiler; a machine
    without one would fail every step. ``build_problem()`` says why they cannot be built and run here, or None.
    Returns the plan to run (see ``_fall_back``)."""
    if plan.ulysses_exchange not in PEER_EXCHANGES:
        return plan
    problem = build_problem()
    if problem is None:
        return plan
    return _fall_back(plan, "exchange", plan.requested_exchange, plan.ulysses_exchange,
                      f"its Triton kernels cannot be built here ({problem})", "NCCL's exchange",
                      ulysses_exchange="nccl", exchange_parts=1)


def _fall_back(plan, setting, value, wanted, problem, instead, **change):
    """``setting`` (now ``value``) led to ``wanted``, which cannot run here because of ``problem``. Chosen
    automatically, the plan with ``change`` (``instead``) and a log line; asked for, an error naming the setting."""
    if value != "auto":
        raise ValueError(f"{setting} '{wanted}': {problem}; set {setting} to auto to use {instead}.")
    log.warning("Enable Multi-GPU: %s; using %s (%s=auto)", problem, instead, setting)
    return dataclasses.replace(plan, **change)


def check_helper_memory(plan, model_bytes, free_bytes, host_available=None, margin=1.10):
    """Every helper holds a full copy of the diffusion model (or its share of it, with ``shard_weights``): refuse
    before starting when one cannot. ``free_bytes(index)`` returns a CUDA device's free memory; CPU ranks all hold
    theirs in host RAM, of which ``host_available()`` returns what is available."""
    if plan.launcher != "local":   # Ray's GPUs and hosts are not visible from here
        return
    if plan.device_type == "cpu":
        _check_cpu_ranks_memory(plan, model_bytes, host_available(), margin)
        return
    for index in plan.device_indices[1:]:
        free = free_bytes(index)
        if plan.shard_weights:
            need = _helper_bytes(model_bytes, plan.world_size, True)
            if free < need * margin:
                raise ValueError(
                    f"GPU {index} has {free / 2**30:.1f} GiB free but holds 1/{plan.world_size} of the diffusion "
                    f"model plus two gathered blocks ({need / 2**30:.1f} GiB plus activations). Free memory on GPU "
                    f"{index}, or use more GPUs so that each share is smaller.")
            continue
        if free < model_bytes * margin:
            raise ValueError(
                f"GPU {index} has {free / 2**30:.1f} GiB free but each helper GPU holds the whole diffusion model "
                f"({model_bytes / 2**30:.1f} GiB plus activations). Free memory on GPU {index}, lower gpus to "
                "leave it out, turn on shard_weights, or load the model in a smaller weight dtype (e.g. fp8).")


def _helper_bytes(model_bytes, world_size, shard_weights):
    return model_bytes * (1 / world_size + SHARDED_EXTRA_FRACTION) if shard_weights else model_bytes


def _check_cpu_ranks_memory(plan, model_bytes, available, margin):
    """With ``--cpu`` every helper rank is a process holding its copy (or share) in host RAM, next to ComfyUI's."""
    def need(ranks):
        return (ranks - 1) * _helper_bytes(model_bytes, ranks, plan.shard_weights) * margin

    if need(plan.world_size) <= available:
        return
    fitting = max((ranks for ranks in range(2, plan.world_size) if need(ranks) <= available), default=None)
    held = "its share of the diffusion model" if plan.shard_weights else "a whole copy of the diffusion model"
    fix = (f"Lower gpus to {fitting} (at most {fitting} CPU ranks fit)" if fitting else
           "Not even one helper rank fits: free host memory or load the model in a smaller weight dtype (e.g. fp8), "
           "or run without Enable Multi-GPU")
    raise ValueError(
        f"{plan.world_size} CPU ranks need {_size(need(plan.world_size))} of host memory for their "
        f"{plan.world_size - 1} helper processes, each holding {held} "
        f"({_size(_helper_bytes(model_bytes, plan.world_size, plan.shard_weights))} plus activations), but "
        f"{_size(available)} is available. {fix}.")


def _size(nbytes):
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
