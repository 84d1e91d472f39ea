"""How long `saelineage --help` takes, beside a bare Python start-up, measured side by side.

    python benchmarks/bench_help.py [--repeat 10]

Imports are lazy (package __init__ files import nothing, commands import their stage when
they run), so the help costs little more than typer itself. Target: < 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    bare = timed([sys.executable, "-c", "pass"], a.repeat)
    typer_only = timed([sys.executable, "-c", "import typer, rich.console"], a.repeat)
    ours = timed([sys.executable, "-m", "saelineage.cli", "--help"], a.repeat)
    sub = timed([sys.executable, "-m", "saelineage.cli", "stats", "--help"], a.repeat)
    print(f"python start-up          {bare:6.3f} s")
    print(f"import typer + rich      {typer_only:6.3f} s")
    print(f"saelineage --help        {ours:6.3f} s   (target < 1 s)")
    print(f"saelineage stats --help  {sub:6.3f} s")
    print(f"ratio --help / typer     {ours / typer_only:6.2f}x")


if __name__ == "__main__":
    main()
