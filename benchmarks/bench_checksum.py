"""The cost of checksums: xxh3-128 vs SHA-256 over a run's shards, and verify-while-reading
against the stats stage's own time (docs/design.md §3).

1. hashing: every shard read into memory once (page cache warm), then hashed in memory with
   xxh3-128 (what the manifest records) and with SHA-256 (for comparison): seconds and GB/s.
2. stats: the run copied to a temporary folder and `run_stats` run with the options its manifest
   recorded, once with collect's checksums recorded (every shard is verified as it is read) and
   once without (unverified, as in a run older than checksums). The ratio printed is
   (hash seconds × passes over the shards) / stats seconds: the verification's share of the stage;
   the wall-clock difference of the two runs is printed too (noisier on a shared machine).

    python benchmarks/bench_checksum.py [RUN]   (default runs/demo; a copy is made, RUN is not changed)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def hash_seconds(blobs: list[bytes], fn) -> float:
    """Best of 3 wall-clock seconds to hash every blob with `fn`."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for b in blobs:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return best


def stats_seconds(run: Path, cfg) -> tuple[float, int]:
    """Wall seconds of one forced stats stage on `run`, and its passes over the shards."""
    from saelineage.stats.stage import run_stats

    t0 = time.perf_counter()
    res = run_stats(run, cfg, force=True, progress=False)
    return time.perf_counter() - t0, int(res.summary.get("passes", 1) or 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/demo", type=Path)
    ap.add_argument("--repeat", type=int, default=2, help="stats runs with and without (best is kept)")
    ap.add_argument("--no-stats", action="store_true", help="only time the hashing")
    args = ap.parse_args()

    import xxhash

    from saelineage import checksum
    from saelineage.config import config_from_dict
    from saelineage.run import RunDir
    from saelineage.stats.config import StatsConfig

    shards = sorted((args.run / "activations").glob("shard-*.safetensors"))
    blobs = [p.read_bytes() for p in shards]
    size = sum(len(b) for b in blobs)
    print(f"run {args.run}: {len(shards)} shards, {size / 1e6:.1f} MB")
    t_xxh = hash_seconds(blobs, xxhash.xxh3_128_hexdigest)
    t_sha = hash_seconds(blobs, lambda b: hashlib.sha256(b).hexdigest())
    print(f"{'hash':<10}{'seconds':>10}{'GB/s':>10}")
    for name, t in (("xxh3_128", t_xxh), ("sha256", t_sha)):
        print(f"{name:<10}{t:>10.4f}{size / t / 1e9:>10.2f}")
    print(f"sha256 / xxh3_128: {t_sha / t_xxh:.1f}x")
    if args.no_stats:
        return

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(shutil.copytree(args.run, Path(tmp) / "run", ignore=shutil.ignore_patterns(".browser-cache")))
        rd = RunDir(run)
        m = rd.load()
        cfg = config_from_dict(StatsConfig, m.stage("stats").get("config") or {})
        with_sums = rd.written_checksums("collect")

        def record(on: bool) -> None:
            man = rd.load()
            if on:  # collect's checksums recorded (a run older than checksums gets them now)
                man.stages["collect"]["checksums"] = with_sums
            else:  # no record: shards are read unverified
                man.stages["collect"].pop("checksums", None)
            rd.save(man)

        stats_seconds(run, cfg)  # warm-up: numba's compiled kernels, the page cache
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeat):  # alternate, so drift on a shared machine hits both
            for on in (True, False):
                record(on)
                t, passes = stats_seconds(run, cfg)
                times[on].append(t)
        t_with, t_without = min(times[True]), min(times[False])
    share = t_xxh * passes / t_with
    print(f"stats (best of {args.repeat}): with verification {t_with:.2f} s, without {t_without:.2f} s")
    print(f"passes over the shards: {passes}")
    print(f"hashing everything stats reads: {t_xxh * passes:.3f} s = {share:.1%} of the stats stage (target ≤ 5%)")
    print(f"wall-clock difference: {(t_with - t_without) / t_without:+.1%} (noisy on a shared machine)")
    print(json.dumps({"xxh3_s": t_xxh, "sha256_s": t_sha, "stats_with_s": t_with, "stats_without_s": t_without,
                      "share": share}))  # fmt: skip
    assert checksum.ALGORITHM == "xxh3_128"


if __name__ == "__main__":
    main()
