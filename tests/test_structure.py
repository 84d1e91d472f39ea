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


def lazy_exports(tree: ast.Module) -> set[ast.AST]:
    """Import nodes inside the top-level package's module `__getattr__` (PEP 562): `saelineage.Run` is
    loaded on attribute access, never while a module is being imported, so it cannot take part in an
    import cycle, and every module may import `saelineage` for `__version__`."""
    return {
        n
        for f in tree.body
        if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(target module, imported name, line) of every saelineage import in the file, at any depth
    (the top-level package's lazy exports aside, see `lazy_exports`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    tree = ast.parse(path.read_text())
    skip = lazy_exports(tree) if path == ROOT / "__init__.py" else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
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


def test_top_level_package_exports_run_lazily():
    """`saelineage.Run` works, but `import saelineage` does not load the notebook API (nor pandas)."""
    import subprocess
    import sys

    code = (
        "import sys, saelineage; assert 'saelineage.notebook.run' not in sys.modules; "
        "assert 'pandas' not in sys.modules; from saelineage import Run; "
        "assert Run.__module__ == 'saelineage.notebook.run'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    tree = ast.parse((ROOT / "__init__.py").read_text())
    assert lazy_exports(tree), "the lazy export is found"
    assert all(isinstance(n, ast.ImportFrom) and n.module == "saelineage.notebook.run" for n in lazy_exports(tree))


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
