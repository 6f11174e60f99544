"""Run a function on N gloo ranks, each a spawned process on a free localhost port."""
from __future__ import annotations

import multiprocessing
import pickle
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=20)  # the ranks' collective timeout
JOIN = 180.0  # seconds to wait for every rank (start-up included) before giving up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world_size, port, threads, group, job, args, queue):
    torch.set_num_threads(threads)
    try:
        if group:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                    timeout=TIMEOUT)
        outcome = ("ok", job(rank, *args))
        if group:
            dist.destroy_process_group()
    except BaseException as exc:  # reported; the process then exits, closing its connections
        outcome = ("error", (type(exc).__name__, str(exc)))
    queue.put((rank, pickle.dumps(outcome)))  # plain pickle: tensors by value, not in shared memory


def run_ranks(world_size: int, job, *args, threads: int = 1, group: bool = True) -> list:
    """``job(rank, *args)`` on ``world_size`` gloo ranks of ``threads`` torch threads each (with
    ``group=False``: processes without a process group); per rank ``("ok", result)`` or
    ``("error", (exception type name, message))``.  ``job`` must be importable (a module-level
    function).  Raises TimeoutError if a rank does not report within ``JOIN``."""
    ctx = multiprocessing.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world_size, port, threads, group, job, args, queue))
             for r in range(world_size)]
    for p in procs:
        p.start()
    out, deadline = {}, time.monotonic() + JOIN
    try:
        while len(out) < world_size:
            try:
                rank, outcome = queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                raise TimeoutError(f"ranks {sorted(set(range(world_size)) - set(out))} did not finish "
                                   f"within {JOIN:.0f} s") from None
            out[rank] = pickle.loads(outcome)
    finally:  # every rank has reported (or the test gives up): a rank slow to exit is not waited for
        for p in procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world_size)]


def results(outcomes) -> list:
    """Each rank's result; AssertionError naming the first rank that failed."""
    for rank, (status, value) in enumerate(outcomes):
        assert status == "ok", f"rank {rank} failed: {value}"
    return [value for _, value in outcomes]
