"""Multi-process runs: `accelerate launch -m lab run RECIPE` (or `torchrun -m lab ...`).

Every rank runs the same states in the same order. Fine-tunes train with DDP (the Trainer sees the
launcher's environment; the recipe's batch_size stays the *global* batch, split over the ranks),
greedy evaluation is sharded (rank r generates, judges and scores prompts r, r + W, ...; the rows are
gathered in the original order, so every rank holds the whole state), and only rank 0 writes the run
directory, logs and tracks. On a CPU the process group uses gloo, on GPUs NCCL (accelerate's choice).
"""
from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the launcher's process group (idempotent); accelerate picks gloo on CPU, NCCL on CUDA."""
    if not is_distributed():
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not _cuda())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        init()
        dist.barrier()


def shard(items: list) -> list:
    """This rank's share: items rank, rank + W, rank + 2W, ..."""
    return items[rank()::world_size()] if is_distributed() else list(items)


def gather(mine: list) -> list:
    """Every rank's list, concatenated in rank order (on every rank)."""
    if not is_distributed():
        return list(mine)
    import torch.distributed as dist

    init()
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, mine)
    return [x for p in parts for x in p]


def broadcast(obj):
    """Rank 0's value of obj on every rank (e.g. an error message, so that all ranks stop together)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    init()
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(n: int, lab_args: list[str]) -> int:
    """Run `lab <lab_args>` as n processes of one gloo/NCCL group on this machine (the torchrun environment:
    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), one torch thread each. Returns the first non-zero exit
    code (the other ranks are stopped) or 0. The ranks print their own errors; no launcher traceback."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "OMP_NUM_THREADS": os.environ.get("LAB_NUM_THREADS", "1"), "LAB_WORKERS": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n)}
    procs = [subprocess.Popen([sys.executable, "-m", "lab", *lab_args],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(n)]
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [c for c in codes if c not in (None, 0)]
            if bad or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        bad = [130]
    for p in procs:  # one rank failed (or Ctrl-C): the others would wait for it forever
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    return bad[0] if bad else 0
