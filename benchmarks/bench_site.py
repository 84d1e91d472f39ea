"""Size and time of `saelineage export-site` on a run, against the stated budget.

    python benchmarks/bench_site.py [RUN] [--out DIR] [--budget-mb 600]

Defaults to the demo run (runs/demo; `make demo` writes it). Exits 1 when the export is larger
than the budget. Every exported feature is a page the server renders (nothing else per feature: the
graphs' side panel reads that page). Measured on the demo run (12 layers x 2,304 latents, 26,546
live), 2 shared CPU cores: 489 MB in 27,118 files, 268 s; feature pages 465 MB (17.5 KB each),
other pages 8.4 MB, graphs 11.2 MB, plotly.js 4.8 MB. The budget leaves 20% for longer labels
and examples; the test suite bounds the bytes per feature on its sample run (tests/test_site.py).
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
    ap.add_argument("--budget-mb", type=float, default=600.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp) / "site"
        res = export_site(a.run, out, SiteConfig(), progress=lambda msg: print(f"  {msg}…", flush=True))
        parts = {
            "feature pages": sum(p.stat().st_size for p in res.out.glob("feature-*-*.html")),
            "other pages": sum(p.stat().st_size for p in res.out.glob("*.html") if not p.name.startswith("feature-")),
            "graphs": sum(p.stat().st_size for p in (res.out / "data" / "graph").rglob("*.json")),
            "plotly.js": sum(p.stat().st_size for p in (res.out / "vendor").rglob("*") if p.is_file()),
        }
    print(f"export-site {a.run}: {res.files:,} files, {res.bytes / 1e6:.1f} MB in {res.seconds:.0f} s")
    for name, n in parts.items():
        print(f"  {name:<13} {n / 1e6:8.1f} MB")
    print(f"  per feature   {parts['feature pages'] / max(res.features, 1):8.0f} bytes ({res.features:,} features)")
    if res.bytes > a.budget_mb * 1e6:
        print(f"over budget: {res.bytes / 1e6:.1f} MB > {a.budget_mb:.0f} MB")
        sys.exit(1)
    print(f"within budget ({a.budget_mb:.0f} MB)")


if __name__ == "__main__":
    main()
