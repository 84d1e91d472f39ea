"""Size and time of `saelineage export-site` on a run, against the stated budget.

    python benchmarks/bench_site.py [RUN] [--out DIR] [--budget-mb 300]

Defaults to the demo run (runs/demo; `make demo` writes it). Exits 1 when the export is larger
than the budget: the demo at the default options must stay under 300 MB (README, "Sharing a run").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from saelineage.web.config import SiteConfig
from saelineage.web.site import export_site


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/demo")
    ap.add_argument("--out", default=None, help="export folder (default: a temporary one, removed)")
    ap.add_argument("--budget-mb", type=float, default=300.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp) / "site"
        res = export_site(a.run, out, SiteConfig(), progress=lambda msg: print(f"  {msg}…", flush=True))
        parts = {
            name: sum(p.stat().st_size for p in (res.out / sub).rglob("*") if p.is_file())
            for name, sub in (("feature data", "data/features"), ("graphs", "data/graph"), ("plotly.js", "vendor"))
        }
        pages = sum(p.stat().st_size for p in res.out.glob("*.html"))
    print(f"export-site {a.run}: {res.files:,} files, {res.bytes / 1e6:.1f} MB in {res.seconds:.0f} s")
    for name, n in [*parts.items(), ("pages", pages)]:
        print(f"  {name:<13} {n / 1e6:8.1f} MB")
    print(f"  per feature   {parts['feature data'] / max(res.features, 1):8.0f} bytes ({res.features:,} features)")
    if res.bytes > a.budget_mb * 1e6:
        print(f"over budget: {res.bytes / 1e6:.1f} MB > {a.budget_mb:.0f} MB")
        sys.exit(1)
    print(f"within budget ({a.budget_mb:.0f} MB)")


if __name__ == "__main__":
    main()
