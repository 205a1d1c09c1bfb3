"""Worker processes for CPU-bound work that splits into independent jobs (the demo's workflows, a benchmark's
identities): spawned, so each imports torch afresh, and one torch thread each."""
from __future__ import annotations

import torch


def one_thread_worker() -> None:
    """Initializer of a worker process that runs torch on one core (two workers on two cores, not four threads
    fighting)."""
    torch.set_num_threads(1)


def in_spawned_processes(jobs: list, workers: int) -> list:
    """``[fn(*args, **kwargs) for fn, args, kwargs in jobs]`` in ``workers`` spawned processes that each run torch on
    one core; results in the jobs' order. ``fn`` must be importable (a module-level function)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=one_thread_worker) as pool:
        futures = [pool.submit(fn, *args, **kwargs) for fn, args, kwargs in jobs]
        return [f.result() for f in futures]
