"""Tiny end-to-end fixtures: a random tiny model, random SAEs in SAELens format, a text corpus."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from saelineage.saes.loading import save_saelens
from saelineage.saes.sae import SAE

WORDS = (
    "the cat dog sat on a mat and ran to house river city people year new first "
    "government music history war team game world school water light time day"
).split()


def write_corpus(path: Path, n_docs: int = 30, words: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n_docs)]
    path.write_text("\n\n".join(docs))
    return path


def random_sae(d_in: int, d_sae: int, hook: str, arch: str = "topk", k: int = 8, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    kw = {"k": k} if arch == "topk" else {}
    if arch == "jumprelu":
        kw["threshold"] = torch.rand(d_sae, generator=g) * 0.2
    return SAE(
        W_enc=w,
        b_enc=torch.randn(d_sae, generator=g) * 0.1 - 0.05,
        W_dec=w.T.contiguous(),
        b_dec=torch.randn(d_in, generator=g) * 0.01,
        architecture=arch,
        hook_name=hook,
        **kw,
    )


def write_saes(
    root: Path, d_in: int, layers, d_sae: int = 96, kind: str = "resid_pre", archs=("topk", "standard", "jumprelu")
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, layer in enumerate(layers):
        hook = f"blocks.{layer}.hook_{kind}"
        save_saelens(random_sae(d_in, d_sae, hook, archs[i % len(archs)], seed=layer), root / hook)
    return root


QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def run_quickstart(run_path: Path, cwd: Path) -> list:
    """Execute examples/quickstart.ipynb against `run_path` (as the README says: SAELINEAGE_RUN)
    and return every code cell's outputs; a cell that raised is a test failure."""
    import os

    import pytest

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(QUICKSTART, as_version=4)
    os.environ["SAELINEAGE_RUN"] = str(run_path)
    try:
        nbclient.NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        del os.environ["SAELINEAGE_RUN"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs
