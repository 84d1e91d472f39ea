"""The package's import graph: no cycles (imports inside functions included), no private names
imported across modules, and package __init__ files that import nothing (docs/design.md §2)."""

from __future__ import annotations

import ast
from pathlib import Path

import saelineage

ROOT = Path(saelineage.__file__).parent


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def lazy_modules() -> list[str]:
    """The modules behind the top-level package's public names (`saelineage._LAZY`, loaded on
    first access by its `__getattr__`): edges of the import graph like any import, since the
    top-level package sits above every other."""
    return sorted(set(saelineage._LAZY.values()))


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(target module, imported name, line) of every saelineage import in the file, at any depth;
    for the top-level package, also the modules of its lazy exports (`lazy_modules`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    tree = ast.parse(path.read_text())
    if path == ROOT / "__init__.py":
        out += [(m, "", 0) for m in lazy_modules()]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if not base.startswith("saelineage"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full if full in known else base, a.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("saelineage")]
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    g: dict[str, set[str]] = {m: set() for m in known}
    for m, p in known.items():
        for target, _, _ in imports(p, m, known):
            if target in known and target != m:
                g[m].add(target)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out, counter = set(), [], [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_private_names_across_modules():
    known = modules()
    bad = [
        f"{m}:{line} imports {name} from {target}"
        for m, p in known.items()
        for target, name, line in imports(p, m, known)
        if name.startswith("_") and not name.startswith("__") and target != m
    ]
    assert bad == []


def test_top_level_package_exports_lazily():
    """`from saelineage import run_collect, CollectConfig, Run, ...` works for every public name,
    but `import saelineage` loads none of them, nor torch, numba, pandas or pyarrow."""
    import subprocess
    import sys

    heavy = ("torch", "numba", "pandas", "pyarrow", "typer", "saelineage.notebook.run", "saelineage.collect.stage")
    code = (
        f"import sys, saelineage; loaded = [m for m in {heavy!r} if m in sys.modules]; "
        "assert not loaded, loaded; "
        "assert all(getattr(saelineage, n).__module__ == m for n, m in saelineage._LAZY.items()); "
        "from saelineage import Run, run_collect, CollectConfig; "
        "assert Run.__module__ == 'saelineage.notebook.run'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(lazy_modules()) >= {"saelineage.notebook.run", "saelineage.collect.stage"}


def test_package_inits_import_nothing():
    """Importing one module must not load its whole package (lazy CLI, honest dependency graph)."""
    for p in ROOT.rglob("__init__.py"):
        if p.parent == ROOT:
            continue  # the top-level package exposes __version__ and, lazily, Run
        body = ast.parse(p.read_text()).body
        code = [
            n
            for n in body
            if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
            and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")
        ]
        assert code == [], f"{p.relative_to(ROOT)} holds code besides its docstring"


LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "version"),
    ("progress", "contract"),
    ("config", "checksum"),
    ("stage configs",),
    ("hints",),
    ("run",),
    ("feature_table",),
    ("models", "cluster"),
    ("data",),
    ("saes",),
    ("run_model",),
    ("collect", "stats", "causal"),
    ("ceiling",),
    ("query",),
    ("lineage",),
    ("notebook", "web"),
    ("demo", "testing", "verify"),
    ("cli",),
    ("saelineage",),
)
"""The package layering, bottom first (docs/design.md §2). A unit imports only units of lower
layers: units of one layer are independent of each other. A unit is a package, or a module at
the top level; each stage's `config` module is the stage's command-line contract and sits low, in
"stage configs", so that fix lines (hints) can print any stage's command."""

STAGE_CONFIGS = {"collect", "stats", "causal", "ceiling", "lineage", "web"}
"""Packages whose `config` module belongs to the "stage configs" unit."""


def unit_of(module: str) -> str:
    """The layering unit of a module name (see LAYERS)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "saelineage"
    if len(parts) == 3 and parts[1] in STAGE_CONFIGS and parts[2] == "config":
        return "stage configs"
    return parts[1]


def layering_violations(g: dict[str, set[str]], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """Each import of module graph `g` that runs from a unit to one of the same or a higher layer,
    and each unit missing from `layers`."""
    rank = {u: k for k, layer in enumerate(layers) for u in layer}
    bad = sorted({f"{unit_of(m)} is in no layer" for m in g if unit_of(m) not in rank})
    for m, targets in sorted(g.items()):
        for t in sorted(targets):
            a, b = unit_of(m), unit_of(t)
            if a != b and a in rank and b in rank and rank[b] >= rank[a]:
                bad.append(f"{m} ({a}) imports {t} ({b}): a layer up or sideways")
    return bad


def test_layering_checker_finds_planted_violations():
    g = {
        "saelineage.errors": set(),
        "saelineage.run": {"saelineage.errors"},
        "saelineage.stats.engine": {"saelineage.run", "saelineage.collect.stage"},  # sideways
        "saelineage.collect.stage": {"saelineage.collect.config"},
        "saelineage.collect.config": {"saelineage.run"},  # up: stage configs sit below run
        "saelineage.mystery": set(),
    }
    layers = (("errors",), ("stage configs",), ("run",), ("collect", "stats"))
    assert layering_violations(g, layers) == [
        "mystery is in no layer",
        "saelineage.collect.config (stage configs) imports saelineage.run (run): a layer up or sideways",
        "saelineage.stats.engine (stats) imports saelineage.collect.stage (collect): a layer up or sideways",
    ]


def test_packages_depend_one_way():
    """No import (inside functions included) runs back up the layering of LAYERS."""
    assert layering_violations(graph(), LAYERS) == []
