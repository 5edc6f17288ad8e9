"""Training on several processes (GPUs, CPU processes or machines) with torch.distributed.

``torchrun --nproc-per-node N -m inspector train ...`` (or ``inspector train --devices N``) starts N copies
of the trainer; this module is everything they do differently from one process:

- :func:`world_from_environment` reads the torchrun variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``) and refuses inconsistent ones in one line naming the variable;
- :func:`joined` starts the process group (NCCL on CUDA GPUs, gloo on the CPU; an unavailable backend is
  one line naming it) and ends it;
- :class:`GradientSync` makes every optimizer of a detector apply the gradient averaged over all processes,
  and keeps the buffers (batch-norm statistics) equal to rank 0's, as DistributedDataParallel does;
- :class:`World` answers "am I rank 0" (only rank 0 writes the run directory, logs and progress bar), agrees
  on stop decisions, broadcasts rank 0's choices and waits at barriers.

A single process never starts a process group: every function here is then a no-op, so a one-process run
is the run it always was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from inspector.errors import InspectorError
from inspector.exit_codes import exit_code_for_signal

BACKENDS = ("auto", "gloo", "nccl")
#: The variables torchrun sets for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run: ``rank`` of ``size`` (one process: 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory, the logs and the progress bar."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true on every process when it is true on any (one small all-reduce)."""
        if not self.is_distributed:
            return tuple(bool(flag) for flag in flags)
        values = torch.tensor([float(bool(flag)) for flag in flags], device=_collective_device(self))
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(value) for value in values.tolist())

    def broadcast_float(self, value: float) -> float:
        """Rank 0's number on every process (one small broadcast)."""
        if not self.is_distributed:
            return value
        holder = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device(self))
        dist.broadcast(holder, src=0)
        return float(holder.item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (a picklable object, such as the run directory's path)."""
        if not self.is_distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0, device=_collective_device(self))
        return holder[0]

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. for rank 0 to finish writing a checkpoint)."""
        if self.is_distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def device(self, device: torch.device) -> torch.device:
        """The device this process trains on: ``cuda:LOCAL_RANK`` for CUDA, else ``device`` itself."""
        if not self.is_distributed or device.type != "cuda":
            return device
        return torch.device("cuda", self.local_rank)


def _collective_device(world: World) -> torch.device:
    return torch.device("cuda", world.local_rank) if world.backend == "nccl" else torch.device("cpu")


def _integer(environ: Mapping[str, str], name: str, minimum: int) -> int:
    text = environ[name].strip()
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise InspectorError(f"{name}={text!r}: torchrun variable must be an integer >= {minimum}")
    return value


def world_from_environment(environ: Mapping[str, str] | None = None) -> World:
    """This process's :class:`World` from the torchrun variables; one process when none is set.

    Raises:
        InspectorError: an inconsistent set, named by variable: ``RANK`` or ``LOCAL_RANK`` without
            ``WORLD_SIZE`` (or the reverse), a value that is not a non-negative integer, ``RANK`` not below
            ``WORLD_SIZE``, ``LOCAL_RANK`` not below ``LOCAL_WORLD_SIZE``, or several processes without
            ``MASTER_ADDR`` / ``MASTER_PORT`` to meet at.

    Example:
        >>> world_from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
        ...                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}).rank
        1
    """
    environ = os.environ if environ is None else environ
    present = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if environ.get(name, "").strip()]
    if not present:
        return World()
    if "WORLD_SIZE" not in present:
        raise InspectorError(
            f"{present[0]} is set but WORLD_SIZE is not: start several processes with torchrun "
            "(or inspector train --devices N), or unset it"
        )
    if "RANK" not in present:
        raise InspectorError(
            "WORLD_SIZE is set but RANK is not: start several processes with torchrun "
            "(or inspector train --devices N), or unset it"
        )
    size = _integer(environ, "WORLD_SIZE", 1)
    rank = _integer(environ, "RANK", 0)
    if rank >= size:
        raise InspectorError(f"RANK={rank} must be below WORLD_SIZE={size} (ranks are 0 to {size - 1})")
    local_rank = _integer(environ, "LOCAL_RANK", 0) if "LOCAL_RANK" in present else 0
    if environ.get("LOCAL_WORLD_SIZE", "").strip():
        local_size = _integer(environ, "LOCAL_WORLD_SIZE", 1)
        if local_rank >= local_size:
            raise InspectorError(f"LOCAL_RANK={local_rank} must be below LOCAL_WORLD_SIZE={local_size}")
        if local_size > size:
            raise InspectorError(f"LOCAL_WORLD_SIZE={local_size} must not exceed WORLD_SIZE={size}")
    if local_rank > rank:
        raise InspectorError(f"LOCAL_RANK={local_rank} must not exceed RANK={rank}")
    if size > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not environ.get(name, "").strip():
                raise InspectorError(
                    f"{name} is not set: the {size} processes (WORLD_SIZE) need rank 0's address and port "
                    "to meet; torchrun sets both"
                )
        port = _integer(environ, "MASTER_PORT", 1)
        if port > 65535:
            raise InspectorError(f"MASTER_PORT={port} is not a port number (1 to 65535)")
    return World(rank=rank, size=size, local_rank=local_rank)


def choose_backend(requested: str, device: torch.device) -> str:
    """The process-group backend: ``auto`` is NCCL for CUDA devices and gloo otherwise.

    Raises:
        InspectorError: an unknown backend, NCCL without CUDA GPUs (or a torch built without it), gloo
            missing from this torch build, or a device that torch.distributed cannot reduce on (MPS).
    """
    requested = (requested or "auto").lower()
    if requested not in BACKENDS:
        raise InspectorError(f"unknown backend '{requested}'; use one of {', '.join(BACKENDS)}")
    if not dist.is_available():
        raise InspectorError(
            f"torch {torch.__version__} was built without torch.distributed: it cannot train on several processes"
        )
    if device.type == "mps":
        raise InspectorError(
            "several processes cannot share Apple's MPS device (no torch.distributed backend for it); "
            "use --device cpu or one process"
        )
    backend = ("nccl" if device.type == "cuda" else "gloo") if requested == "auto" else requested
    if backend == "nccl":
        if not dist.is_nccl_available():
            raise InspectorError(
                f"backend nccl is not available in this torch build ({torch.__version__}); use --backend gloo"
            )
        if device.type != "cuda" or not torch.cuda.is_available():
            raise InspectorError(
                "backend nccl needs CUDA GPUs and this run trains on the "
                f"{'CPU (no CUDA GPU is usable here)' if not torch.cuda.is_available() else device.type}; "
                "use --backend gloo (or auto)"
            )
    if backend == "gloo" and not dist.is_gloo_available():
        raise InspectorError(f"backend gloo is not available in this torch build ({torch.__version__})")
    return backend


@contextlib.contextmanager
def joined(
    device: torch.device, backend: str = "auto", environ: Mapping[str, str] | None = None
) -> Iterator[World]:
    """The run's :class:`World`: with several processes, the process group is started (env:// from the
    torchrun variables) for the body and ended after it. A process group that the caller started already
    is used as it is and left running."""
    world = world_from_environment(environ)
    if not world.is_distributed:
        yield world
        return
    name = choose_backend(backend, device)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise InspectorError(
                f"LOCAL_RANK={world.local_rank} but this machine has {count} CUDA GPU(s): start at most "
                f"{count} processes per machine (--nproc-per-node)"
            )
        torch.cuda.set_device(world.local_rank)
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group(backend=name, init_method="env://", rank=world.rank, world_size=world.size)
    else:
        name = dist.get_backend()
    world = World(rank=world.rank, size=world.size, local_rank=world.local_rank, backend=name)
    try:
        yield world
    finally:
        if started_here and dist.is_initialized():
            dist.destroy_process_group()


class GradientSync:
    """Every optimizer of a detector applies the gradient averaged over the processes.

    Why not wrap the networks in ``DistributedDataParallel``: the detectors do their own training steps
    with several optimizers, and DDP's contract (one forward of the wrapper, then one backward that
    reduces every parameter it used) does not hold in them: ALOCC and BiGAN run their discriminator several
    times per step, freeze it with ``requires_grad_(False)`` while the generator's loss flows through it,
    and ALOCC's Wasserstein penalty takes a second-order ``torch.autograd.grad``. Wrapping would mean calling
    every sub-network through its wrapper in every detector, ``find_unused_parameters`` and
    ``no_sync`` bookkeeping, and ``module.`` prefixes in state dicts. Instead a step pre-hook on each
    optimizer all-reduces (averages) the gradients that optimizer is about to apply, in one flat tensor:
    the very synchronisation DDP performs, placed where every detector already passes, so the detectors'
    code does not change, and the state dicts stay those of the plain detector (a checkpoint resumes in
    one process or several alike).

    Buffers (batch-norm running statistics, spectral-norm vectors, step counters) follow rank 0's after
    every step, as DDP's ``broadcast_buffers`` does; :meth:`start` makes every process start from rank 0's
    parameters and buffers.

    A detector's choice of which parameters get a gradient must not depend on its data (true of every
    registered detector): the processes reduce the same list of tensors.
    """

    def __init__(self, detector: nn.Module, world: World) -> None:
        self.detector, self.world = detector, world
        self._handles: list[Any] = []
        if world.is_distributed:
            for optimizer in getattr(detector, "optimizers", {}).values():
                self._handles.append(optimizer.register_step_pre_hook(self._average_gradients))

    def start(self) -> None:
        """Rank 0's parameters and buffers on every process (before the first step)."""
        if self.world.is_distributed:
            self._broadcast([*self.detector.parameters(), *self.detector.buffers()])

    def after_step(self) -> None:
        """Rank 0's buffers on every process (after each training step)."""
        if self.world.is_distributed:
            self._broadcast(list(self.detector.buffers()))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _average_gradients(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        gradients = [
            parameter.grad
            for group in optimizer.param_groups
            for parameter in group["params"]
            if parameter.grad is not None
        ]
        if not gradients:
            return
        flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world.size
        offset = 0
        for gradient in gradients:
            count = gradient.numel()
            gradient.copy_(flat[offset : offset + count].view(gradient.shape))
            offset += count

    def _broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        # One broadcast per dtype: batch-norm counters are integers, the rest floating point.
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for tensor in tensors:
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        with torch.no_grad():
            for group in by_dtype.values():
                flat = torch.cat([tensor.detach().reshape(-1) for tensor in group])
                dist.broadcast(flat, src=0)
                offset = 0
                for tensor in group:
                    count = tensor.numel()
                    tensor.copy_(flat[offset : offset + count].view(tensor.shape))
                    offset += count


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank ``rank``'s random streams (noise, latent draws) from ``step`` on: distinct per rank.

    Rank 0 is never reseeded (a one-process run keeps its streams); this is for ranks above 0.
    """
    return int(np.random.SeedSequence([int(seed) % 2**63, int(rank), int(step)]).generate_state(1)[0])


def launch_on_this_machine(processes: int, arguments: Sequence[str]) -> int:
    """Run ``inspector train ARGUMENTS`` as ``processes`` processes of one machine under torchrun
    (``python -m torch.distributed.run --standalone``, which finds a free port); return its exit code."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={int(processes)}",
        "-m",
        "inspector",
        "train",
        *arguments,
    ]
    child = subprocess.Popen(command)
    try:
        return child.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached torchrun and its workers too: they save last.pt and stop; wait for them, then exit
        # as an interrupted one-process run does (torchrun's own code says only that it was signalled).
        child.wait()
        return exit_code_for_signal(signal.SIGINT)
