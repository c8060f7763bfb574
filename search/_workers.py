"""Several worker processes on one study: one per GPU, or N on the CPU.

Each worker is a process of its own (spawned, so CUDA and thread pools start clean) that joins
the study through its storage and runs trials until the study has its total. Trial numbers come
from the storage, so they never repeat; a worker that dies leaves the others running. The
parent process creates the study and its MLflow parent run first, so every worker's trials are
children of the same run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerPlan", "plan_workers", "run_workers"]


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process gets: its index, its GPU (or None) and its CPU threads."""

    index: int
    device: str | None
    threads: int


def plan_workers(workers: int | None, devices: Sequence[str] | None) -> list[WorkerPlan]:
    """One worker per listed GPU, else ``workers`` CPU workers sharing the cores."""
    if devices:
        return [WorkerPlan(i, d, 1) for i, d in enumerate(devices)]
    n = workers or 1
    threads = max(1, (os.cpu_count() or 1) // n)
    return [WorkerPlan(i, None, threads) for i in range(n)]


def _worker(cfg_dict: dict[str, Any], plan: WorkerPlan) -> None:
    if plan.device is not None:
        # Before torch initialises CUDA: this process sees its one GPU as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = plan.device
    import torch

    from ._quiet import quiet_libraries

    torch.set_num_threads(plan.threads)
    quiet_libraries()  # as in the CLI's own process
    from ._config import StudyConfig
    from ._records import TrialRecord
    from ._study import prepare, run_study

    cfg = StudyConfig.from_dict(cfg_dict)
    if plan.device is not None:
        cfg = cfg.replace("train", accelerator="gpu")
    run = prepare(cfg)
    # A sampler seed of its own: the same seed would propose the same architectures.
    run.worker = f"worker-{plan.index}"

    def line(run_: Any, trial: Any) -> None:
        r = TrialRecord.from_trial(trial)
        shown = f"val_acc {r.val_acc:.4f}" if r.trained else r.state.name
        print(f"[worker {plan.index}] trial {trial.number}: {shown}", flush=True)

    run_study(run, on_trial=line, shared=True)


def run_workers(cfg_dict: dict[str, Any], plans: Sequence[WorkerPlan]) -> list[int]:
    """Runs the workers to completion; returns each one's exit code (0: finished normally)."""
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(cfg_dict, p), name=f"cnnas-worker-{p.index}")
        for p in plans
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        raise
    return [p.exitcode if p.exitcode is not None else -1 for p in procs]
