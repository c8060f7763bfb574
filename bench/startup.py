"""Start-up time of the command line: ``cnnas --help`` against ``python -c pass``.

Both run as whole processes, alternating, several rounds; the medians and their ratio are
printed. The help text needs no torch, Lightning, MLflow or Optuna, so it should cost little more
than starting the interpreter (target: at most 2x ``python -c pass``). ``--command`` times
another invocation the same way (``--command "cnnas config list"``).

    python bench/startup.py                  # 15 rounds
    python bench/startup.py --rounds 30
    python bench/startup.py --cnnas /path/to/other/venv/bin/cnnas   # another install, e.g. main
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import time


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--cnnas", default=shutil.which("cnnas") or "cnnas", help="the cnnas to time")
    p.add_argument("--command", help="time this command instead of `cnnas --help`")
    args = p.parse_args()
    command = shlex.split(args.command) if args.command else [args.cnnas, "--help"]
    baseline = [sys.executable, "-c", "pass"]
    timed(command), timed(baseline)  # warm the page cache for both
    ours, base = [], []
    for _ in range(args.rounds):
        ours.append(timed(command))
        base.append(timed(baseline))
    m_ours, m_base = statistics.median(ours), statistics.median(base)
    print(f"{shlex.join(command)}: median {m_ours * 1000:.0f} ms over {args.rounds} runs")
    print(f"{shlex.join(baseline)}: median {m_base * 1000:.0f} ms")
    print(f"ratio: {m_ours / m_base:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
