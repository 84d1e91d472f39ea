"""The SAELens release directory as saelineage reads it: layers, sites and variants of every release.

sae_lens ships its pretrained directory offline (`pretrained_saes.yaml`: release → hub repo,
model, SAE id → path, conversion function). It names no hook per SAE, so what a release offers
is read from the names it publishes: each SAE id (and its path) carries its layer, and often its
width (`width_16k`), its sparsity variant (`l0_medium`, `average_l0_105`) and a seed (`seed_1`).
An id with its layer replaced by `{layer}` is a *template*; the SAEs of one template across
layers form one lineage stack. The hook itself is read from each SAE's own config when it is
loaded (saes/release.py), never from a table here.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from saelineage.errors import SaelineageError

SITES = ("resid_pre", "resid_mid", "resid_post", "mlp_out", "attn_out", "transcoder")
"""Where a release's SAEs read, as named by the release (`saelineage releases --site`)."""

# The layer inside an SAE id or path, most specific first; group 1 is the layer.
_LAYER_PATTERNS = (
    re.compile(r"blocks\.(\d+)\."),
    re.compile(r"layer[_-]?(\d+)", re.IGNORECASE),
    re.compile(r"^l(\d+)[a-z]"),  # Llama Scope ids: l12r_8x
    re.compile(r"L(\d+)[RAMTC]\b|L(\d+)[RAMTC]-"),  # Llama Scope paths: ...-L12R-8x
    re.compile(r"^(\d+)(?:-|$)"),  # 0-res-sm, or a bare layer number
)
_WIDTH = (
    re.compile(r"width-2pow(\d+)"),
    re.compile(r"width[_-](\d+[km]?)(?!\d|pow)", re.IGNORECASE),
    re.compile(r"(?:^|[_\-/])(\d+[km])(?:$|[_\-/.])", re.IGNORECASE),
    re.compile(r"[_\-](\d+x)(?:$|[_\-/])"),
)
_L0 = (
    re.compile(r"average_l0_(\d+)"),
    re.compile(r"l0[_-](small|medium|big|\d+)", re.IGNORECASE),
    re.compile(r"/(canonical)$"),
)
# Llama Scope's sublayer letter after the layer (L12R: residual stream, A: attention, M: MLP, TC: transcoder)
_SUBLAYER = re.compile(r"L\d+(R|A|M|TC)\b|L\d+(R|A|M|TC)-")
_SUBLAYER_SITES = {"R": "resid_post", "A": "attn_out", "M": "mlp_out", "TC": "transcoder"}
_RELEASE_WIDTH = re.compile(r"[-_]w(\d+[km])(?:[-_]|$)", re.IGNORECASE)
_SEED = re.compile(r"[_-]seed[_-]?(\d+)")
_HOOK_SITES = (
    ("hook_resid_pre", "resid_pre"),
    ("hook_resid_mid", "resid_mid"),
    ("hook_resid_post", "resid_post"),
    ("hook_mlp_out", "mlp_out"),
    ("hook_attn_out", "attn_out"),
    ("hook_z", "attn_out"),
)
# Architectures or kinds of dictionary whose latents are not one layer's features, with why.
_NOT_FOR_LINEAGE = {
    "temporal": "its latents depend on earlier tokens' codes (a temporal SAE), so co-firing with other "
    "layers' per-token features mixes positions",
}


@dataclass(frozen=True)
class ReleaseChoice:
    """Which SAEs of a release to use: an id or a template with `{layer}`, else a width / sparsity / seed."""

    sae_id: str | None = None
    width: str | None = None
    l0: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class CatalogSae:
    """One SAE of a release, as its id and path name it."""

    sae_id: str
    path: str
    layer: int | None
    """Block index named by the id (None: an embedding SAE or a name without a layer)."""
    template: str
    """The id with its layer written `{layer}` (the id itself when it names no layer)."""
    width: str | None
    """Width as written in the name ('16k', '262k', '4096', '8x'); None when the name has none."""
    l0: str | None
    """Sparsity variant as written ('medium', '105', 'canonical'); None when the name has none."""
    seed: int
    """Training seed named by the id (`…_seed_1`); 0 when it names none."""
    expected_l0: float | None


@dataclass(frozen=True)
class Release:
    """A release of sae_lens's directory, with the variants its SAE names show."""

    name: str
    repo_id: str
    model: str
    """The model as the directory names it (a TransformerLens name or a hub id)."""
    conversion: str | None
    saes: tuple[CatalogSae, ...]
    site: str | None
    architecture: str | None
    """Architecture when the release's name tells it (the loaded config decides)."""
    unusable: str | None = None
    """Why the release cannot feed lineage (None when it can)."""
    by_id: dict[str, CatalogSae] = field(default_factory=dict, compare=False, repr=False)

    @property
    def layers(self) -> list[int]:
        return sorted({s.layer for s in self.saes if s.layer is not None})

    @property
    def widths(self) -> list[str]:
        return sorted({s.width for s in self.saes if s.width}, key=width_value)

    @property
    def l0s(self) -> list[str]:
        return sorted({s.l0 for s in self.saes if s.l0}, key=_l0_key)

    @property
    def has_second_seed(self) -> bool:
        return any(s.seed > 0 for s in self.saes)

    def templates(self) -> dict[str, list[int]]:
        """{template: layers it covers}, in the directory's order."""
        out: dict[str, list[int]] = {}
        for s in self.saes:
            if s.layer is not None:
                out.setdefault(s.template, []).append(s.layer)
        return {t: sorted(set(ls)) for t, ls in out.items()}


def width_value(text: str | None) -> float:
    """Latents a width name stands for: '16k' → 16384, '65k' → 65536, '262k' → 262144, '1m' → 1048576,
    '2pow14' → 16384, '24576' → 24576; '8x' → 8 (an expansion factor). Releases round powers of two to
    thousands in their names, so 'Nk' is the power of two nearest N·1000 when N·1024 is not one."""
    if not text:
        return float("inf")
    s = str(text).strip().lower()
    try:
        if s.startswith("2pow"):
            return float(2 ** int(s[4:]))
        if s[-1:] in ("k", "m"):
            n = float(s[:-1])
            exact = n * (1024 if s[-1] == "k" else 1024 * 1024)
            if exact.is_integer() and int(exact) & (int(exact) - 1) == 0:
                return exact
            return float(2 ** round(math.log2(n * (1000 if s[-1] == "k" else 1_000_000))))
        return float(s[:-1]) if s.endswith("x") else float(s)
    except ValueError:
        return float("inf")


def _l0_key(text: str) -> tuple[int, float, str]:
    named = {"small": 0, "medium": 1, "big": 2, "canonical": -1}
    if text in named:
        return (0, named[text], text)
    try:
        return (1, float(text), text)
    except ValueError:
        return (2, 0.0, text)


def _first(patterns: Iterable[re.Pattern[str]], text: str) -> re.Match[str] | None:
    for p in patterns:
        m = p.search(text)
        if m:
            return m
    return None


def _group(m: re.Match[str]) -> tuple[str, int]:
    """The first group that matched, with its start."""
    for g in range(1, (m.re.groups or 0) + 1):
        if m.group(g) is not None:
            return m.group(g), m.start(g)
    return m.group(0), m.start(0)


def parse_sae(sae_id: str, path: str, expected_l0: float | None = None) -> CatalogSae:
    """Read layer, width, sparsity variant and seed from an SAE's id (its path where the id is silent)."""
    layer, template = None, sae_id
    m = _first(_LAYER_PATTERNS, sae_id)
    if m is not None and "embedding" not in sae_id:
        value, start = _group(m)
        layer, template = int(value), sae_id[:start] + "{layer}" + sae_id[start + len(value) :]
    elif "embedding" not in sae_id and "embedding" not in path:
        m = _first(_LAYER_PATTERNS, path.rsplit("/", 1)[-1]) or _first(_LAYER_PATTERNS, path)
        layer = int(_group(m)[0]) if m else None
    named = f"{sae_id}/{path}"
    w = _first(_WIDTH, named)
    width = None
    if w is not None:
        width = _group(w)[0].lower()
        if w.re is _WIDTH[0]:
            width = str(2 ** int(width))
    lm = _first(_L0, sae_id) or _first(_L0, path)
    seed = _SEED.search(sae_id)
    return CatalogSae(
        sae_id=sae_id,
        path=path,
        layer=layer,
        template=template,
        width=width,
        l0=_group(lm)[0].lower() if lm else None,
        seed=int(seed.group(1)) if seed else 0,
        expected_l0=expected_l0 or None,
    )


def _site(name: str, saes: tuple[CatalogSae, ...]) -> str | None:
    """The site most of the release's SAEs name (a TransformerLens hook in the id, else words of the names)."""
    votes: dict[str, int] = {}
    by_name = _site_of_text(name)
    for s in saes:
        site = _site_of_text(f"{s.sae_id} {s.path}") or by_name
        if site:
            votes[site] = votes.get(site, 0) + 1
    return max(votes, key=lambda k: votes[k]) if votes else None


def _site_of_text(raw: str) -> str | None:
    text = raw.lower()
    if "transcoder" in text or "-clt" in text:
        return "transcoder"
    for hook, site in _HOOK_SITES:
        if hook in text:
            return site
    sub = _SUBLAYER.search(raw)
    if sub:
        return _SUBLAYER_SITES[sub.group(1) or sub.group(2)]
    if "mlp" in text:
        return "mlp_out"
    if "att" in text:
        return "attn_out"
    if "resid_pre" in text or "resid-pre" in text:
        return "resid_pre"
    if "resid_mid" in text or "resid-mid" in text:
        return "resid_mid"
    if re.search(r"res(?:id)?(?:[_\-]|$)", text):
        return "resid_post"
    return None


def _architecture(name: str, conversion: str | None) -> str | None:
    text = f"{name} {conversion or ''}".lower()
    if "transcoder" in text and conversion in ("gemma_3", "gemma_2_transcoder"):
        return "jumprelu_transcoder"
    for word, arch in (
        ("temporal", "temporal"),
        ("transcoder", "transcoder"),
        ("gated", "gated"),
        ("matryoshka", "matryoshka"),
        ("topk", "topk"),
        ("jumprelu", "jumprelu"),
        ("gemma_2", "jumprelu"),
        ("gemma_3", "jumprelu"),
        ("llama_scope", "jumprelu"),
        ("qwen_scope", "topk"),
        ("vanilla", "standard"),
    ):
        if word in text:
            return arch
    return None


def _directory() -> dict[str, Any]:
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError as exc:
        raise SaelineageError(
            "SAELens releases need the sae_lens package, which is not installed.",
            "pip install 'saelineage[saelens]'  (or pip install sae-lens), or pass --saes FOLDER with local SAEs.",
        ) from exc
    return get_pretrained_saes_directory()


@cache
def releases() -> dict[str, Release]:
    """Every release of the installed sae_lens's directory, parsed (offline)."""
    out: dict[str, Release] = {}
    for name, entry in _directory().items():
        saes = tuple(parse_sae(sid, str(path), entry.expected_l0.get(sid)) for sid, path in entry.saes_map.items())
        named = _RELEASE_WIDTH.search(name)
        if named and not any(s.width for s in saes):  # one width for the whole release, in its name (-w32k-)
            saes = tuple(replace(s, width=named.group(1).lower()) for s in saes)
        arch = _architecture(name, entry.conversion_func)
        unusable = _NOT_FOR_LINEAGE.get(arch or "") or _NOT_FOR_LINEAGE.get(entry.conversion_func or "")
        out[name] = Release(
            name=name,
            repo_id=entry.repo_id,
            model=entry.model,
            conversion=entry.conversion_func,
            saes=saes,
            site=_site(name, saes),
            architecture=arch,
            unusable=unusable,
            by_id={s.sae_id: s for s in saes},
        )
    return out


def is_release(name: str) -> bool:
    """Whether `name` is a release of the installed sae_lens (False when sae_lens is absent)."""
    try:
        return name in releases()
    except SaelineageError:
        return False


def get_release(name: str) -> Release:
    """The release called `name`; an unknown name raises one error with the closest names."""
    known = releases()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    if not close:
        close = sorted(r for r in known if name.split("-")[0].lower() in r.lower())[:5]
    raise SaelineageError(
        f"'{name}' is neither a folder nor a SAELens release.",
        (f"did you mean {', '.join(close)}? " if close else "")
        + "`saelineage releases` lists the releases of the installed sae_lens; or pass a folder of SAE folders.",
    )


@cache
def hub_model(model: str) -> str:
    """The Hugging Face hub id of a directory model name ('gpt2-small' → 'gpt2'), through TransformerLens'
    own alias table; names it does not know are taken as hub ids."""
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:
        return model
    try:
        return get_official_model_name(model)
    except ValueError:
        return model


def _choices(release: Release, templates: dict[str, list[int]]) -> str:
    lines = [f"{t} ({_span(ls)})" for t, ls in templates.items()]
    shown = "; ".join(lines[:12]) + (f"; … {len(lines) - 12} more" if len(lines) > 12 else "")
    extra = []
    for flag, values in (("--width", release.widths), ("--l0", release.l0s)):
        if len(values) > 1:
            extra.append(f"{flag} {'|'.join(values[:10])}{'|…' if len(values) > 10 else ''}")
    return f"pass --sae-id with one of: {shown}" + (f"; or narrow with {' and '.join(extra)}" if extra else "") + "."


def _span(layers: list[int]) -> str:
    if not layers:
        return "no layers"
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"layers {layers[0]}-{layers[-1]}"
    return f"layer{'s' if len(layers) > 1 else ''} {','.join(map(str, layers))}"


def select(
    release: Release,
    *,
    sae_id: str | None = None,
    width: str | None = None,
    l0: str | None = None,
    seed: int = 0,
    layers: Iterable[int] | None = None,
) -> dict[int, str]:
    """{layer: sae id}: the one stack of `release` that the options name.

    sae_id: an id, or a template with `{layer}`. Without it, the SAEs of the requested width,
    sparsity and seed are grouped by template; the template covering the most layers (all of
    `layers` when given) is used when exactly one does, and anything else is one error listing
    the templates to choose from.
    """
    if release.unusable:
        raise SaelineageError(
            f"release '{release.name}' cannot be used for lineage: {release.unusable}.",
            "use a release of per-layer SAEs or transcoders (`saelineage releases` lists them).",
        )
    want = sorted(set(layers)) if layers is not None else None
    if sae_id is not None:
        return _by_template(release, sae_id, want)
    pool = [s for s in release.saes if s.layer is not None and s.seed == seed]
    if width is not None:
        pool = [s for s in pool if s.width is not None and width_value(s.width) == width_value(width)]
    if l0 is not None:
        pool = [s for s in pool if s.l0 is not None and s.l0 == str(l0).lower()]
    if not pool:
        asked = ", ".join(
            f"{k} {v}" for k, v in (("width", width), ("l0", l0), ("seed", seed or None)) if v is not None
        )
        raise SaelineageError(
            f"release '{release.name}' has no SAE with {asked or 'a layer'}.",
            _choices(release, release.templates()),
        )
    templates: dict[str, list[int]] = {}
    for s in pool:
        templates.setdefault(s.template, []).append(s.layer)  # type: ignore[arg-type]
    templates = {t: sorted(set(ls)) for t, ls in templates.items()}
    if want is not None:
        covering = {t: ls for t, ls in templates.items() if set(want) <= set(ls)}
        if len(covering) != 1:
            problem = (
                f"no single SAE id of release '{release.name}' covers layers {want}"
                if not covering
                else f"release '{release.name}' has {len(covering)} SAEs for each of layers {want}"
            )
            raise SaelineageError(problem + ".", _choices(release, covering or templates))
        (template,) = covering
        return {l: template.format(layer=l) for l in want}
    # the widest stack is used when it is the only one and every other stack only repeats some of its
    # layers (res-jb: resid_pre of 0-11 beside resid_post of 11); otherwise the user must choose
    best = max(len(ls) for ls in templates.values())
    top = [t for t, ls in templates.items() if len(ls) == best]
    if len(top) != 1 or any(not set(ls) <= set(templates[top[0]]) for ls in templates.values()):
        widest = {t: ls for t, ls in templates.items() if len(ls) == best} if len(top) > 1 else templates
        raise SaelineageError(
            f"release '{release.name}' has {len(templates)} SAE stacks"
            + (f", {len(top)} of them over {_span(templates[top[0]])}" if len(top) > 1 else "")
            + "; which one is meant is ambiguous.",
            _choices(release, widest),
        )
    template = top[0]
    return {l: template.format(layer=l) for l in templates[template]}


def _by_template(release: Release, sae_id: str, want: list[int] | None) -> dict[int, str]:
    if "{layer}" not in sae_id:
        if sae_id not in release.by_id:
            close = difflib.get_close_matches(sae_id, list(release.by_id), n=4, cutoff=0.6)
            raise SaelineageError(
                f"release '{release.name}' has no SAE '{sae_id}'.",
                (f"did you mean {', '.join(close)}? " if close else "") + _choices(release, release.templates()),
            )
        s = release.by_id[sae_id]
        if s.layer is None:
            raise SaelineageError(
                f"SAE '{sae_id}' of release '{release.name}' names no layer (an embedding SAE?).",
                "choose per-layer SAEs for lineage.",
            )
        return {s.layer: sae_id}
    found = {s.layer: s.sae_id for s in release.saes if s.layer is not None and s.template == sae_id}
    if not found:  # a template of the user's own spelling: try each layer the release has
        found = {l: sae_id.format(layer=l) for l in release.layers if sae_id.format(layer=l) in release.by_id}
    if want is not None:
        missing = [l for l in want if l not in found]
        if missing:
            raise SaelineageError(
                f"release '{release.name}' has no SAE '{sae_id}' for layers {missing}"
                + (f" (it has layers {sorted(found)})." if found else "."),
                "choose --layers among those, or " + _choices(release, release.templates()),
            )
        found = {l: found[l] for l in want}
    if not found:
        raise SaelineageError(
            f"release '{release.name}' has no SAE matching '{sae_id}'.", _choices(release, release.templates())
        )
    return dict(sorted(found.items()))


def seed_twin(release: Release, sae_id: str, seed: int = 1) -> str | None:
    """The id of the same SAE trained with another seed (`…_seed_1`; the id itself when it names a seed
    already), or None when the release has none."""
    base = release.by_id.get(sae_id)
    if base is None:
        return None
    if base.seed > 0:
        return sae_id
    stem = _SEED.sub("", sae_id)
    for s in release.saes:
        if s.seed == seed and _SEED.sub("", s.sae_id) == stem:
            return s.sae_id
    return None


def summary(release: Release) -> dict[str, Any]:
    """One row of `saelineage releases`."""
    return {
        "release": release.name,
        "model": release.model,
        "hub_model": hub_model(release.model),
        "site": release.site,
        "layers": release.layers,
        "n_saes": len(release.saes),
        "widths": release.widths,
        "l0": release.l0s,
        "architecture": release.architecture,
        "second_seed": release.has_second_seed,
        "repo_id": release.repo_id,
        "usable": release.unusable is None,
        "why_not": release.unusable,
    }


def usable_with(model: str | None = None, site: str | None = None) -> list[Release]:
    """Releases for `model` (a hub id or TransformerLens name; None: every model) at `site`."""
    if site is not None and site not in SITES:
        raise SaelineageError(f"unknown site '{site}'.", f"use one of {', '.join(SITES)}.")
    target = hub_model(model).lower() if model else None
    out = []
    for r in releases().values():
        if target is not None and hub_model(r.model).lower() != target:
            continue
        if site is not None and r.site != site:
            continue
        out.append(r)
    return out
