"""Stage configurations are dataclasses, and the command line is generated from them.

Each field of a stage's config (`CollectConfig`, `StatsConfig`, `AnalyzeConfig`, `AblateConfig`,
`ServeConfig`) has its default in the dataclass and its help text in the docstring under it,
written once: `config_options` turns the fields into typer options, and `to_argv` turns a config
back into the flags that reproduce it (error hints print such commands).

A field whose command-line form differs from its Python value (a layer list written `0-11`, a
boolean with a `--no-` form, a renamed flag) says so with `cli(...)` in its metadata.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import typer

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
DataclassT = TypeVar("DataclassT", bound="DataclassInstance")
_MISSING = dataclasses.MISSING


def usable_cpus() -> int:
    """The CPUs this process may run on: its CPU affinity where the OS has one (Linux: a container's
    cpuset, `taskset`), else the machine's count; at least 1. Every default thread count of the
    package (stats --workers, DuckDB) comes from here. A CPU quota without a cpuset (docker
    --cpus, a cgroup's cpu.max) is not seen: there, give the thread count explicitly."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        try:
            return max(1, len(affinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CliForm:
    """How one config field appears on the command line."""

    flag: str | None = None
    """Option name (default: --field-name); "--x/--no-x" for a switch with both forms."""
    parse: Callable[[str], Any] | None = None
    """Text -> value, for fields given as text (lists, pairs, mappings)."""
    show: Callable[[Any], str] | None = None
    """Value -> text, the inverse of `parse` (for `to_argv`)."""
    repeat: bool = False
    """Given by repeating the option (`--keep a=1 --keep b=2`); parse/show work per item, and a
    dict-valued field collects the parsed (key, value) items."""
    hidden: bool = False
    """Not a command-line option (set from Python only)."""


@dataclass
class ClusterOptions:
    """Where a stage runs: this process (default) or a Ray cluster. The configs of the stages that
    can run on Ray (collect, stats, ablate) inherit these fields."""

    ray: str | None = None
    """Run on Ray: a cluster's address (host:port, or 'auto' inside a cluster), or 'local' to start
    Ray on this machine. Every node must see the run directory at the same path (a shared
    filesystem); needs `pip install 'saelineage[ray]'`."""
    ray_workers: int | None = None
    """Ray workers at once (default: one per GPU with --device cuda, else one per CPU of the cluster)."""


CLUSTER_FIELDS = ("ray", "ray_workers")
"""Fields that say where a stage runs, never what it computes (left out of identity hashes)."""


def cli(**kw: Any) -> dict[str, CliForm]:
    """Field metadata: ``field(default=..., metadata=cli(flag="--examples"))``."""
    return {"cli": CliForm(**kw)}


def _form(f: dataclasses.Field) -> CliForm:
    return f.metadata.get("cli", CliForm())


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (and its bases), as one line of help."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def command_help(doc: str | None) -> str:
    """A command's docstring as typer help: the hard-wrapped lines of each paragraph joined into
    one, and rich markup escaped. typer (rich markup mode) keeps single line breaks, so lines
    wrapped at 100 columns came out ragged in narrower terminals, and '[i]' vanished as a tag."""
    from rich.markup import escape

    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(escape(" ".join(p.split())) for p in paragraphs if p.strip())


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    raise TypeError(f"config field {f.name} has no default")


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that are command-line options."""
    return [f for f in dataclasses.fields(cls) if not _form(f).hidden]


def flag_of(f: dataclasses.Field) -> str:
    return _form(f).flag or "--" + f.name.replace("_", "-")


def _option_type(cls: type, f: dataclasses.Field) -> Any:
    form = _form(f)
    if form.parse is not None:
        return Optional[list[str]] if form.repeat else Optional[str]
    return typing.get_type_hints(cls)[f.name]


def config_options(cls: type, *, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """typer option parameters for the command-line fields of `cls` (keyword-only, field order)."""
    from rich.markup import escape  # help is rendered as rich markup: '[ray]' would vanish as a tag

    docs, params = {k: escape(v) for k, v in field_docs(cls).items()}, []
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        form, default = _form(f), default_of(f)
        if form.parse is not None:  # given as text; the default is shown as its text form
            shown: list[str] | str | None
            if form.repeat:
                items = default.items() if isinstance(default, dict) else (default or [])
                shown = [form.show(v) if form.show else str(v) for v in items] or None
            else:
                shown = None if default is None else (form.show(default) if form.show else str(default))
            opt = typer.Option(shown, flag_of(f), help=docs.get(f.name, ""))
        else:
            opt = typer.Option(default, flag_of(f), help=docs.get(f.name, ""))
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=_option_type(cls, f))
        )
    return params


def _is_dict(cls: type, f: dataclasses.Field) -> bool:
    hint = typing.get_type_hints(cls)[f.name]
    return any(typing.get_origin(a) is dict or a is dict for a in (hint, *typing.get_args(hint)))


def from_options(cls: type[T], values: dict[str, Any], **fixed: Any) -> T:
    """Build a `cls` from command-line values (text fields parsed); `fixed` sets other fields."""
    kw = dict(fixed)
    for f in cli_fields(cls):
        if f.name not in values:
            continue
        form, v = _form(f), values[f.name]
        if form.parse is not None and v is not None:
            v = [form.parse(x) for x in v] if form.repeat else form.parse(v)
            if form.repeat:
                v = (dict(v) if isinstance(default_of(f), dict) or _is_dict(cls, f) else v) if v else default_of(f)
        kw[f.name] = v
    return cls(**kw)


def with_config(cls: type, *, skip: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a typer command `fn(<its own params>, cfg)`: the command line gets one option
    per field of `cls` (after fn's own parameters), and `fn` receives the built config as `cfg`."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "cfg"]
        opts = config_options(cls, skip=skip)
        names = {p.name for p in opts}

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            cfg: Any = from_options(cls, {k: v for k, v in kwargs.items() if k in names})
            return fn(**{k: v for k, v in kwargs.items() if k not in names}, cfg=cfg)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + opts
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return deco


def to_argv(cfg: Any) -> list[str]:
    """Command-line flags that reproduce `cfg` (fields equal to their defaults are left out)."""
    out: list[str] = []
    for f in cli_fields(type(cfg)):
        v, default, form = getattr(cfg, f.name), default_of(f), _form(f)
        if v == default:
            continue
        flag = flag_of(f)
        if "/" in flag:
            on, off = flag.split("/")
            if v is not None:
                out.append(on if v else off)
        elif form.repeat:
            for item in v.items() if isinstance(v, dict) else v:
                out += [flag, form.show(item) if form.show else str(item)]
        elif isinstance(v, bool):
            out.append(flag)  # a plain switch: only its True form exists
        elif v is not None:
            out += [flag, form.show(v) if form.show else str(v)]
    return out


def config_from_dict(cls: type[DataclassT], data: dict[str, Any]) -> DataclassT:
    """A config from a dict read back from JSON (the manifest): keys of other versions are
    ignored, and lists become tuples where the field's default is a tuple."""
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            v = data[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) and isinstance(default_of(f), tuple) else v
    return cls(**kw)
