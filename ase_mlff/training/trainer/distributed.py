"""Data-parallel training under ``torchrun``: the process group and how the ranks agree.

Each process takes every W-th structure of each global batch; gradients are summed with
``all_reduce`` (gloo on CPU, nccl on GPU). Only rank 0 checks and writes files and prints; the
ranks meet in :meth:`Distributed.agree` wherever one of them could stop alone, so they stop
together and none runs ahead of a file being written. An error is printed once, by the rank
that met it (:func:`recipe_failure`); the others raise a copy marked ``peer_rank``
(:func:`reported_elsewhere`) and exit with the same status.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ...errors import DatasetError, InputError, MLFFError, OutputExistsError, TrainingError


def error_classes() -> dict[str, type]:
    """What another rank's failure looks like on this one, by class name: the same class (so
    every process exits with the same status) and message, marked with ``peer_rank`` so the
    command line does not print it a second time (the rank that met it did)."""
    from ...errors import ModelFileError
    from ..common import ReferenceEnergiesError, SplitError, UsageError

    return {c.__name__: c for c in (MLFFError, InputError, OutputExistsError, ModelFileError, DatasetError,
                                    TrainingError, UsageError, SplitError, ReferenceEnergiesError, ValueError,
                                    TypeError, OSError, FileNotFoundError, PermissionError, ImportError,
                                    ModuleNotFoundError)}


def reported_elsewhere(exc: BaseException) -> bool:
    """Whether ``exc`` stands for another rank's error, which that rank reports (see
    :meth:`Distributed.agree`): a command prints nothing for it and exits with the same status."""
    return getattr(exc, "peer_rank", None) is not None


def process_rank() -> int:
    """This process's rank: the process group's when one is joined, else torchrun's ``RANK``
    (0 for a single process). Decides who prints and writes."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


@dataclass
class Distributed:
    """This process's place in a data-parallel run (``world == 1``: a single process).

    Who does what: every rank trains; **rank 0 alone** checks and writes files (checkpoint,
    model, plots; it removes the checkpoint) and prints; the other ranks wait for it at
    :meth:`agree`, a collective that also shares a failure, so a rank never trains on while
    another has stopped, and no rank goes on past a file rank 0 is still writing.
    """

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Every process starts from rank 0's weights and buffers."""
        if self.world > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(t.data, src=0)

    def broadcast_text(self, text: str, src: int = 0) -> str:
        """``src``'s ``text`` on every rank (UTF-8 bytes in a tensor: no pickle)."""
        if self.world <= 1:
            return text
        import torch.distributed as dist

        data = text.encode() if self.rank == src else b""
        n = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(n, src=src)
        buf = (torch.tensor(list(data), dtype=torch.uint8) if self.rank == src
               else torch.zeros(int(n), dtype=torch.uint8)).to(self.device)
        dist.broadcast(buf, src=src)
        return bytes(buf.cpu().tolist()).decode()

    def agree(self, error: BaseException | None = None) -> None:
        """Collective (every rank calls it, also as a barrier): when any rank passes an error,
        every rank raises. The lowest failing rank raises its own ``error``; every other rank
        raises one of the same class and message with ``peer_rank`` set (see
        :func:`reported_elsewhere`). A single process just raises ``error``."""
        if self.world <= 1:
            if error is not None:
                raise error
            return
        flags = torch.zeros(self.world, dtype=torch.int64, device=self.device)
        flags[self.rank] = int(error is not None)
        self.all_reduce(flags)
        failed = torch.nonzero(flags).flatten().tolist()
        if not failed:
            return
        src = int(failed[0])
        what = self.broadcast_text(f"{type(error).__name__}\n{error}" if self.rank == src else "", src)
        if self.rank == src:
            error.all_ranks = True
            raise error
        name, _, message = what.partition("\n")
        exc = error_classes().get(name, TrainingError)(message if name in error_classes()
                                                          else f"rank {src}: {name}: {message}")
        exc.peer_rank, exc.all_ranks = src, True
        raise exc

    def same_everywhere(self, text: str, what: str) -> None:
        """Refuse (TrainingError on every rank) to go on when the ranks' ``text`` differ: the
        processes must train the same model on the same data with the same options."""
        if self.world <= 1:
            return
        import hashlib

        h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")  # fits an int64
        lo_hi = torch.tensor([-h, h], dtype=torch.int64, device=self.device)
        self.all_reduce(lo_hi, "max")
        if -int(lo_hi[0]) != int(lo_hi[1]):
            exc = TrainingError(f"the {self.world} processes differ in {what}; every process must read the same "
                                "data with the same command (multi-node: the same data file and flags on every node)")
            exc.all_ranks = True
            if not self.is_main:  # every rank found it; rank 0 reports it
                exc.peer_rank = 0
            raise exc

    def close(self, error: BaseException | None = None) -> None:
        """Leave the group this object joined (nothing for a group joined elsewhere). ``error``:
        the exception on the way out, if any."""
        if self.initialized_here:
            import torch.distributed as dist

            # Everyone waits for everyone before the group is torn down: a rank that destroyed its
            # gloo group early aborted at exit now and then ("terminate called without an active
            # exception", status -6). Not after an error only this rank met: the others are in
            # another collective, and leaving at once makes theirs fail instead of hang.
            try:
                if error is None or in_step(error):
                    dist.barrier()
            finally:
                dist.destroy_process_group()
                self.initialized_here = False


def in_step(exc: BaseException) -> bool:
    """Whether every rank raised ``exc`` at the same point (shared by :meth:`Distributed.agree`,
    a stop request shared at a safe point, a diverging loss every rank sums alike)."""
    from ..checkpoint import TrainingInterrupted

    return bool(getattr(exc, "all_ranks", False) or reported_elsewhere(exc) or isinstance(exc, TrainingInterrupted))


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); a single process when
    ``WORLD_SIZE`` is unset or 1. Backend nccl with one GPU per process when CUDA is used,
    gloo otherwise. A group joined before (e.g. by :func:`distributed_run`) is reused, and
    left for its owner to close."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for, but torch sees no GPU; use --device cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if world <= 1:
        return Distributed(0, 1, dev, False)
    import torch.distributed as dist

    if not dist.is_available():
        raise TrainingError("WORLD_SIZE > 1 but this torch was built without torch.distributed; "
                            "run a single process")
    if dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), dev, False)
    if use_cuda:
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), dev, True)


class distributed_run:
    """``with distributed_run(device) as ddp:`` holds the process group (under torchrun) for a
    whole command, so that what comes before and after :func:`train_network` (reading the
    data, checking the outputs, writing the model) can use :meth:`Distributed.agree` too;
    :func:`train_network` reuses the group. Closes it (after a barrier) on the way out."""

    def __init__(self, device: str = "auto"):
        self.device = device
        self.ddp: Distributed | None = None

    def __enter__(self) -> Distributed:
        self.ddp = init_distributed(self.device)
        return self.ddp

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.ddp.close(exc)
        return False


def run_recipe(prog: str, body: Callable[[Any, "Distributed"], int], args) -> int:
    """A network recipe's command: ``body(args, ddp)`` inside one process group for the whole
    command (:class:`distributed_run`); a group that cannot be joined is an error of ``prog``
    (exit status 1)."""
    try:
        with distributed_run(args.device) as ddp:
            return body(args, ddp)
    except MLFFError as exc:  # joining the process group failed, or another rank's error
        if not reported_elsewhere(exc):
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def recipe_failure(prog: str) -> Callable[[BaseException, int], int]:
    """``fail(exc, code)`` of a recipe's command: print the error in the command line's words
    unless another rank reports it (:func:`reported_elsewhere`), return ``code``."""
    from ...data import command_line_message

    def fail(exc, code):
        # printed by the rank that met it when the ranks agreed on it (Distributed.agree marks it
        # all_ranks); one that every rank met by itself (a split check of the same data), by rank 0
        if not reported_elsewhere(exc) and (getattr(exc, "all_ranks", False) or process_rank() == 0):
            print(f"{prog}: error: {command_line_message(str(exc))}", file=sys.stderr)
        return code

    return fail
