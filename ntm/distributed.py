"""Several processes, one result: the little torch.distributed this harness needs, and nothing in one process.

`torchrun --nproc-per-node N -m cli reproduce ...` starts N copies of a command. `init()` joins them into one
process group (gloo on CPU; with a GPU per process NCCL for CUDA tensors and gloo for CPU ones, each rank
on cuda:LOCAL_RANK). Training then averages gradients over the ranks, each rank drawing its own `shard` of every
batch (`ntm.train.fit`, `baselines.training.training_batch`); evaluation hands each rank every N-th batch
and gathers the outputs back in order (`benchmarks.suites.base.in_batches`); rank 0 alone writes files.

Without torchrun (WORLD_SIZE unset or 1), or before `init()`, every function here is a no-op or trivial:
rank 0 of 1, so the single-process code path is the same code. torch is imported on first use, so the CLI,
which imports this module at start-up, stays quick to answer --help.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_state = {"owned": False, "alone": False}
"""owned: this module created the process group (so `shutdown` destroys it); alone: rank 0 works on by
itself after `main_goes_on` (every function then answers as in a single process)."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (torchrun sets it)") from None


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when not launched by torchrun): how many processes should join."""
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """LOCAL_RANK as torchrun set it (0 otherwise): this process's index on its machine, i.e. its GPU."""
    return _env_int("LOCAL_RANK", 0)


def _group() -> Any:
    """torch.distributed when a process group is up and in use here, else None."""
    if _state["alone"]:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def gpu_per_process() -> bool:
    """True when this machine has a GPU for each of its torchrun processes (LOCAL_WORLD_SIZE of them)."""
    import torch

    wanted = _env_int("LOCAL_WORLD_SIZE", launched_world_size())
    return torch.cuda.is_available() and torch.cuda.device_count() >= wanted


def init() -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1 and none is up yet; True if this call created it.

    With a GPU per process each rank is pinned to cuda:LOCAL_RANK (`torch.cuda.set_device`), so "cuda" means
    its own GPU, and the group is "cpu:gloo,cuda:nccl": gradients of a CUDA model go through NCCL, and CPU
    models and the pickled objects of `gather_objects`/`broadcast` through gloo. Otherwise it is gloo alone
    (CPU work; more processes than GPUs cannot share them through NCCL).
    """
    if launched_world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run the command as one process")
    if dist.is_initialized():
        return False
    # torch._dynamo (which torch.optim imports when an optimiser is built) keeps a reference to every object
    # it finds in torch's modules when it is first imported, the default process group among them. Imported
    # after the group exists, it keeps the group alive past destroy_process_group, and gloo's worker threads
    # are then torn down during interpreter exit, which can abort the process (SIGABRT) as a thread releases
    # the last tensor it reduced. Imported first, it holds no group, and `shutdown` really frees it.
    import torch._dynamo  # noqa: F401
    if gpu_per_process():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    _state["owned"] = True
    return True


def shutdown() -> None:
    """Destroy the process group `init` created (and end `main_goes_on`'s solo mode); a no-op otherwise."""
    _state["alone"] = False
    if _state["owned"]:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _state["owned"] = False


def command(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI command that trains or evaluates: `init()` before it, `shutdown()` after it.

    Nested commands (one command calling another) share the outer command's group.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        created = init()
        try:
            return fn(*args, **kwargs)
        finally:
            if created:
                shutdown()

    return run


def rank() -> int:
    """This process's rank in the group; 0 in a single process."""
    dist = _group()
    return dist.get_rank() if dist else 0


def world_size() -> int:
    """How many processes share the work; 1 in a single process (or before `init`, or after `main_goes_on`)."""
    dist = _group()
    return dist.get_world_size() if dist else 1


def is_main() -> bool:
    """True on rank 0, the one rank that writes checkpoints, records and tables and prints results."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank got here (a no-op in a single process)."""
    dist = _group()
    if dist:
        dist.barrier()


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor in it (in lists, tuples, dicts and dataclasses) moved to the CPU and detached.

    Objects are pickled to travel between ranks; a CUDA tensor would unpickle onto the sender's GPU index.
    """
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(to_cpu(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = copy.copy(obj)
        for f in dataclasses.fields(obj):
            object.__setattr__(moved, f.name, to_cpu(getattr(obj, f.name)))  # frozen dataclasses too
        return moved
    return obj


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (tensors moved to the CPU), in rank order, on every rank; [obj] in a single process."""
    dist = _group()
    if not dist:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, to_cpu(obj))
    return out


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (`obj` itself in a single process): one decision all ranks act on alike,
    e.g. whether a record or a checkpoint exists, so no rank skips a collective the others enter."""
    dist = _group()
    if not dist:
        return obj
    box = [to_cpu(obj) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: Sequence[T], what: str = "batch") -> Sequence[T]:
    """This rank's share `items[rank::world]` of a full batch every rank drew alike; `items` in one process.

    The draw stays the single-process one, so N processes together see exactly the same samples, and a
    mean over each rank's share, averaged over the ranks, is the full batch's mean. The batch must split
    evenly (ValueError otherwise): equal shares are what makes that average the full-batch mean.
    """
    world = world_size()
    if world == 1:
        return items
    if len(items) % world:
        raise ValueError(
            f"a {what} of {len(items)} does not split evenly over {world} processes; make the batch_size in the "
            f"preset's [train.*] table a multiple of {world}"
        )
    return items[rank() :: world]


def all_mean(value: Any) -> Any:
    """The mean over ranks of a tensor (every rank gets it; a new tensor), the tensor itself in one process."""
    dist = _group()
    if not dist:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def average_gradients(params: Iterable[Any]) -> None:
    """Replace each parameter's `.grad` by its mean over the ranks (a no-op in a single process).

    One all-reduce per (device, dtype) of a flat buffer. A parameter with no gradient on some rank counts as
    zero there; one with no gradient on every rank keeps `.grad = None`, so the optimiser skips it exactly as
    a single process would. Averaging (not summing) the means of equal shares gives the full-batch gradient.
    """
    dist = _group()
    if not dist:
        return
    import torch

    world = dist.get_world_size()
    buckets: dict[tuple[Any, Any], list[Any]] = {}
    for p in params:
        buckets.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), group in buckets.items():
        zeros = functools.partial(torch.zeros, device=device, dtype=dtype)
        grads = [p.grad.reshape(-1) if p.grad is not None else zeros(p.numel()) for p in group]
        present = torch.tensor([p.grad is not None for p in group], device=device, dtype=dtype)
        flat = torch.cat([*grads, present])
        dist.all_reduce(flat)
        flat.div_(world)
        anywhere = (flat[-len(group) :] > 0).tolist()
        offset = 0
        for p, used in zip(group, anywhere, strict=True):
            mean = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if not used:
                p.grad = None
            elif p.grad is None:
                p.grad = mean.clone()
            else:
                p.grad.copy_(mean)


def main_goes_on() -> bool:
    """End the ranks' work together: False on every rank but 0, which carries on alone from here.

    After a barrier, rank 0 answers as a single process (`world_size() == 1`) until `shutdown`, so what it
    does next (tables, printing, an audit that trains and evaluates) needs no other rank; the other ranks
    return and exit. In a single process: True, and nothing changes.
    """
    dist = _group()
    if not dist:
        return True
    dist.barrier()
    if dist.get_rank() != 0:
        return False
    _state["alone"] = True
    return True
