"""Optuna storages under concurrent workers: the journal file (cnnas's local default), SQLite and,
when a server is given, PostgreSQL.

Each storage gets the same load: N worker processes start together and each runs M trials of a
study with cnnas's trial pattern (ten suggested parameters, eight user attributes, two objectives)
and no training, so the storage is all that is timed. Printed per storage: trials that reached the
storage, errors (e.g. SQLite's "database is locked"), and milliseconds of storage time per trial
(each worker's time after its imports, summed, per stored trial). The last line gives SQLite's
and the journal's time per trial and their ratio.

    python bench/storage.py                                   # 4 workers x 50 trials
    python bench/storage.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
import uuid
from pathlib import Path

import optuna


def storage_for(url: str):
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def objective(trial: optuna.Trial) -> tuple[float, float]:
    x = sum(trial.suggest_int(f"p{i}", 1, 64) for i in range(10))
    for i in range(8):
        trial.set_user_attr(f"attr{i}", {"value": x, "curve": [0.1 * i] * 5})
    return x / 640, float(x)


def worker(url: str, name: str, trials: int, out: mp.Queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    errors = 0
    start = time.perf_counter()
    try:
        study = optuna.load_study(
            study_name=name,
            storage=storage_for(url),
            sampler=optuna.samplers.RandomSampler(),
        )
        for _ in range(trials):
            try:
                study.optimize(objective, n_trials=1)
            except Exception:
                errors += 1
    except Exception:
        errors += trials
    out.put((time.perf_counter() - start, errors))


def measure(url: str, workers: int, trials: int) -> tuple[int, int, float]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    optuna.create_study(
        study_name=name, storage=storage_for(url), directions=["maximize", "minimize"]
    )
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, name, trials, queue)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    done = len(optuna.load_study(study_name=name, storage=storage_for(url)).trials)
    errors = sum(e for _, e in results)
    # Storage time per trial: each worker's time on its own trials (from after its imports),
    # summed over the workers, per stored trial.
    return done, errors, 1000 * sum(s for s, _ in results) / max(done, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--trials", type=int, default=50, help="trials per worker")
    p.add_argument("--postgres", help="a PostgreSQL URL to measure as well")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as root:
        urls = {
            "journal file": f"journal:{Path(root) / 'optuna.journal'}",
            "sqlite": f"sqlite:///{Path(root) / 'optuna.db'}",
        }
        if args.postgres:
            urls["postgresql"] = args.postgres
        print(f"{args.workers} worker processes x {args.trials} trials each, no training")
        print(f"{'storage':<14} {'trials':>7} {'errors':>7} {'ms/trial':>9}")
        ms = {}
        for label, url in urls.items():
            done, errors, ms[label] = measure(url, args.workers, args.trials)
            print(f"{label:<14} {done:>7} {errors:>7} {ms[label]:>9.1f}")
    print(
        f"sqlite {ms['sqlite']:.1f} ms/trial vs journal file {ms['journal file']:.1f} ms/trial: "
        f"journal is {ms['sqlite'] / ms['journal file']:.1f}x faster under "
        f"{args.workers} concurrent workers"
    )


if __name__ == "__main__":
    main()
