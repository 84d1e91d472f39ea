"""The analyze stage: lifecycle, gates, splits, communities and sample prompt graphs.

Reads features.parquet, feature_links.parquet and edges.parquet (stats) and the activation
store (two validation passes); writes lifecycle.parquet, gates.parquet, best_pairs.parquet,
splits.parquet, communities.parquet, prompt_graphs.json, lifecycle.html and its per-feature
table feature_analysis.parquet (`lifecycle`, `has_pred`, `has_succ`, `community`; collect's
features.parquet is only read). Every file is written atomically; re-running with the same options after a
complete run is skipped (unless stats or the ceiling ran since), other options are refused without
--force, and an interrupted run simply starts again (all outputs are pure functions of the inputs and
the options).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saelineage import contract
from saelineage.contract import Manifest
from saelineage.data.finalize import read_vocab
from saelineage.errors import SaelineageError
from saelineage.feature_table import feature_rows
from saelineage.lineage import bootstrap, evidence, gates, lifecycle, splits
from saelineage.lineage import communities as comm
from saelineage.lineage.config import AnalyzeConfig
from saelineage.lineage.export import sample_graphs
from saelineage.lineage.figures import write_lifecycle_html
from saelineage.lineage.validate import Requests, count
from saelineage.progress import console
from saelineage.query.prompt_graph import GraphContext
from saelineage.run import (
    RunDir,
    StageResult,
    identity,
    parquet_file,
    present,
    read_parquet,
    settle,
    write_json,
    write_parquet,
    writes_run,
)

EDGE_COLUMNS = (*contract.EDGE_KEY, "n_co", *contract.DATA_MEASURES)
"""The columns of edges.parquet that analyze reads (besides dec_cosine when present)."""


OUTPUTS = tuple(name for name, writer in contract.WRITER.items() if writer == "analyze")
"""Every file analyze writes: all of them on disk, or the stage is not complete."""


def check_config(cfg: AnalyzeConfig, edge_names: list[str]) -> None:
    """Refuse options that cannot work on this run's edges, before anything is written (the config
    checks its own fields when it is made)."""
    for name, m in (
        ("--pair-measure", cfg.pair_measure),
        ("--community-measure", cfg.community_measure),
        ("--prompt-measure", cfg.prompt_measure),
    ):
        if m not in edge_names:
            raise SaelineageError(
                f"{name} {m!r} is not a column of edges.parquet.",
                f"choose one of {', '.join(c for c in edge_names if c not in EDGE_COLUMNS[:4])}.",
            )
    comm.check_options(cfg.quality, cfg.leiden_backend)  # its choices live with the Leiden code


def _edges(run: RunDir) -> dict[str, np.ndarray]:
    f = parquet_file(run.file(contract.EDGES))  # one verified read: schema and columns from its bytes
    names = f.schema_arrow.names
    t = f.read(columns=[c for c in names if c in EDGE_COLUMNS or c == "dec_cosine"])
    out = {}
    for c in t.column_names:
        a = t.column(c).to_numpy(zero_copy_only=False)
        out[c] = a.astype(np.int64) if c in ("src_layer", "src", "dst_layer", "dst", "n_co") else a.astype(np.float64)
    return out


def _next(layers: list[int], l: int) -> int | None:
    i = layers.index(l)
    return layers[i + 1] if i + 1 < len(layers) else None


def _best_ids(links: pa.Table, layers: list[int], measure: str) -> dict[tuple[int, int], np.ndarray]:
    """Each feature's best successor over all pairs (feature_links): {(l, next): [K, 2] (a, j)}."""
    lay = links.column("layer").to_numpy()
    fid = links.column("feature").to_numpy().astype(np.int64)
    best = links.column(f"best_succ_{measure}_id").to_numpy(zero_copy_only=False).astype(np.int64)
    out = {}
    for l in layers[:-1]:
        sel = (lay == l) & (best >= 0)
        nxt = _next(layers, l)
        assert nxt is not None  # l is not the last layer
        out[(l, nxt)] = np.stack([fid[sel], best[sel]], axis=1)
    return out


def _rows_by_pair(e: dict[str, np.ndarray], rows: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Edge rows grouped by (src_layer, dst_layer)."""
    out = {}
    for l, m in sorted(set(zip(e["src_layer"][rows].tolist(), e["dst_layer"][rows].tolist()))):
        out[(l, m)] = rows[(e["src_layer"][rows] == l) & (e["dst_layer"][rows] == m)]
    return out


def _merge_pairs(*dicts: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    out: dict[int, list] = {}
    for d in dicts:
        for l, p in d.items():
            out.setdefault(int(l), []).append(np.asarray(p, np.int64).reshape(-1, 2))
    # lexicographic unique rows == sorted by the encoded key lo * d + hi that gates.lookup uses
    return {l: np.unique(np.concatenate(ps), axis=0) for l, ps in out.items()}


@writes_run("analyze")
def run_analyze(
    run_dir: str | Path, cfg: AnalyzeConfig | None = None, *, force: bool = False, progress: bool = True
) -> StageResult:
    """Lifecycle, gates, splits, communities and sample prompt graphs of a run with complete stats;
    summary: the counts recorded in the manifest (lifecycle, gates, splits, communities, ...)."""
    t_start = time.perf_counter()
    opt = cfg or AnalyzeConfig()
    run = RunDir(run_dir)
    manifest = run.require("stats")
    stats_entry = manifest.stage("stats")
    stamp = {k: stats_entry.get(k) for k in ("started", "seconds")}
    ceiling_entry = manifest.stage("ceiling")
    if ceiling_entry.get("status") == "complete":  # a new ceiling changes the lifecycle
        stamp["ceiling"] = {k: ceiling_entry.get(k) for k in ("started", "seconds")}
    prev = manifest.stage("analyze")
    # results made from other inputs (stats or the ceiling ran since) are stale: nothing to keep or skip
    done = (
        prev.get("status") == "complete"
        and prev.get("stats_stamp") == stamp
        and all(run.file(f).is_file() for f in OUTPUTS)
    )
    ident = identity(opt)
    if settle(
        run, "analyze", ident, prev.get("options") if done else None, complete=done, force=force, progress=progress
    ):
        return StageResult.since(t_start, "analyze", run, skipped=True, summary=_counts(prev))
    from saelineage.hints import recollect, stats_command

    for name, writer in (
        (contract.FEATURES, "collect"),
        (contract.FEATURE_LINKS, "stats"),
        (contract.EDGES, "stats"),
    ):
        if not run.file(name).is_file():
            fix = (
                f"{recollect(run.path, manifest=manifest)}: collect writes {name}."
                if writer == "collect"
                else f"run `{stats_command(run.path, force=True, manifest=manifest)}`: stats writes {name}."
            )
            raise SaelineageError(f"{run.file(name)} is missing.", fix)
    e = _edges(run)
    check_config(opt, list(e))
    with run.stage("analyze", options=ident, stats_stamp=stamp) as info:
        info.update(_analyze(run, manifest, opt, e, progress))
    summary = _counts(run.load().stage("analyze"))
    return StageResult.since(t_start, "analyze", run, skipped=False, summary=summary)


def _counts(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("lifecycle", "gates", "splits", "communities", "prompt_graphs", "intervals")}


def _feature_analysis(feats: pa.Table, lc: lifecycle.Lifecycle, community: np.ndarray) -> pa.Table:
    """analyze's per-feature table, in features.parquet's row order (contract.ANALYSIS_COLUMNS)."""
    cols = {c: feats.column(c) for c in contract.KEY}
    cols["lifecycle"] = pa.array(list(lc.label), pa.string())
    for name, flag in (("has_pred", lc.has_pred), ("has_succ", lc.has_succ)):  # null: no such layer
        cols[name] = pa.array(flag == 1, pa.bool_(), mask=flag < 0)
    cols["community"] = pa.array(np.where(community >= 0, community, 0), pa.int64(), mask=community < 0)
    return pa.table(cols)


def _analyze(run: RunDir, manifest: Manifest, opt: AnalyzeConfig, e: dict[str, np.ndarray], progress: bool) -> dict:
    layers, d_sae = manifest.layers, manifest.d_sae
    feats = read_parquet(run.file(contract.FEATURES))
    links = read_parquet(run.file(contract.FEATURE_LINKS))
    say = console.print if progress else (lambda *_: None)

    # lifecycle (no pass over the codes: feature_links holds the best match over all pairs)
    ceiling = (
        read_parquet(run.file(contract.SEED_CEILING))
        if manifest.status("ceiling") == "complete" and present(run.file(contract.SEED_CEILING))
        else None
    )
    lc = lifecycle.classify(feats, links, layers, opt.measure, opt.threshold, ceiling)

    # candidates, then one validation pass counting what they need
    evidence_test = opt.gate_test == "evidence"
    tau_g = opt.gate_threshold
    tau_v = tau_g if opt.gate_valid is None else opt.gate_valid
    tau_s = tau_g if opt.split_threshold is None else opt.split_threshold
    floor_e = opt.min_prob if opt.candidate_floor is None else opt.candidate_floor
    floor = floor_e if evidence_test else tau_g
    c_and = gates.candidates(e, "and", floor, opt.min_support, opt.max_parents)
    c_or = gates.candidates(e, "or", floor, opt.min_support, opt.max_parents)
    c_best = gates.best_pair_candidates(e, opt.min_support, opt.pair_measure)
    g_pairs, g_triples = gates.build_requests([c_and, c_or, c_best], d_sae)
    s_cand = splits.split_candidates(
        e, floor_e if evidence_test else tau_s, opt.min_support, opt.max_children, copy=tau_s
    )
    p1, p2, s_pairs = splits.child_pair_requests(s_cand)
    pairs = _merge_pairs(g_pairs, s_pairs)
    f_layer = feats.column("layer").to_numpy().astype(np.int64)
    f_id = feats.column("feature").to_numpy().astype(np.int64)
    n_windows = manifest.n_windows
    samples = (
        np.unique(np.linspace(0, n_windows - 1, min(opt.prompt_samples, n_windows)).round().astype(np.int64))
        if opt.prompt_samples > 0 and n_windows > 0
        else None
    )
    ex = (
        read_parquet(run.file(contract.EXAMPLES), columns=["layer", "feature", "rank", "window", "pos"])
        if present(run.file(contract.EXAMPLES))
        else None
    )
    if ex is not None:
        ex = ex.filter(pc.less(ex.column("rank"), opt.top_examples))
    wg = weights = None
    link_req: dict = {}
    c_rows = np.zeros(0, np.int64)
    gate_rows = np.concatenate([c_and["ea"], c_and["eb"], c_or["ea"], c_or["eb"], s_cand["er"]])
    if opt.bootstrap > 0 and n_windows > 1:
        wg = bootstrap.window_groups(n_windows, opt.bootstrap_groups, opt.seed)
        weights = bootstrap.replicate_weights(int(wg.max()) + 1, opt.bootstrap, opt.seed)
        if opt.community_bootstrap > 0:
            c_rows = bootstrap.community_rows(e, opt.community_measure, opt.community_threshold)
        link_req = bootstrap.merge_links(
            bootstrap.lifecycle_links(e, _best_ids(links, layers, opt.measure), opt.measure),
            {
                k: np.stack([e["src"][r], e["dst"][r]], axis=1)
                for k, r in _rows_by_pair(e, np.unique(np.concatenate([gate_rows, c_rows]))).items()
            },
        )
    req = Requests(
        pairs=pairs,
        triples=g_triples,
        links=link_req,
        window_groups=wg,
        samples=samples,
        sample_pos=-1,
        example_keys=None if ex is None else (ex.column("window").to_numpy(), ex.column("pos").to_numpy()),
    )
    say(
        f"analyze: validating {len(c_and['j']):,} AND / {len(c_or['j']):,} OR gate candidates, "
        f"{len(c_best['j']):,} parent pairs, {len(s_cand['c']):,} split children"
    )
    counts = count(run, req)

    # gates: every candidate scored, q-values over the whole family, then the chosen test
    scored = gates.concat_scored(
        [
            gates.score_candidates(
                e, c, gates.lookup(c, pairs, g_triples, counts, d_sae), kind, counts.n_tokens, opt.confidence
            )
            for kind, c in (("and", c_and), ("or", c_or))
        ]
    )
    scored["q_value"] = evidence.bh_qvalues(scored["p_value"])
    keep = gates.select_gates(scored, opt.gate_test, opt.min_support, tau_v, opt.fdr, opt.min_prob, opt.min_gain)
    gate_table = gates.gate_table(scored, keep)
    select = {"test": opt.gate_test, "min_support": opt.min_support, "tau_valid": tau_v, "fdr": opt.fdr,
              "min_prob": opt.min_prob, "min_gain": opt.min_gain}  # fmt: skip

    # bootstrap intervals: lifecycle shares and gate counts from the per-group counts
    life_reps: dict[int, dict[str, np.ndarray]] = {}
    count_reps: dict[str, np.ndarray] = {}
    if weights is not None:
        assert wg is not None and counts.by_group is not None  # weights come with window groups
        say(
            f"analyze: {len(weights)} bootstrap replicates over {int(wg.max()) + 1} groups of windows; "
            f"{int(bootstrap.near_passing(scored, select).sum()):,} gate candidates near the bars re-tested"
        )
        live_by_layer = {l: lc.live[f_layer == l][np.argsort(f_id[f_layer == l])] for l in layers}
        reps = bootstrap.lifecycle_replicates(
            counts.by_group,
            {k: v for k, v in link_req.items() if k[1] == _next(layers, k[0])},
            weights, layers, live_by_layer, opt.measure, opt.threshold,
        )  # fmt: skip
        life_reps = reps
        rows = np.unique(gate_rows)
        g_reps = bootstrap.gate_count_replicates(
            e, {"and": c_and, "or": c_or}, scored, pairs, g_triples,
            (rows, bootstrap.locate_links(e, rows, link_req)), counts.by_group, weights, d_sae,
            select, opt.confidence,
        )  # fmt: skip
        count_reps = {f"gates_{k}": v for k, v in g_reps.items()}
    life_table = lifecycle.layer_table(
        feats, links, layers, opt.measure, opt.threshold, replicates=life_reps, ceiling=ceiling
    )
    best_table = gates.best_pairs_table(
        e, c_best, gates.lookup(c_best, pairs, g_triples, counts, d_sae), opt.pair_measure
    )

    # splits: choose exclusive children, then a second pass for coverage / exclusivity
    pj, _ = splits.child_pair_jaccard(s_cand, p1, p2, pairs, counts, d_sae)
    child_ev = splits.child_evidence(e, s_cand, counts.n_tokens, counts.n_active, opt.confidence)
    eligible = (
        splits.eligible_children(e, s_cand, counts.n_tokens, counts.n_active, opt.fdr, opt.min_prob, opt.confidence)
        if evidence_test
        else None
    )
    chosen, max_pair = splits.choose_children(s_cand, p1, p2, pj, opt.exclusivity, eligible)
    groups = splits.split_groups(s_cand, chosen)
    group_counts = {}
    if groups:
        say(f"analyze: validating {sum(len(g[0]) for g in groups.values()):,} splits")
        c2 = count(run, Requests(groups={k: g[:3] for k, g in groups.items()}, window_groups=wg))
        group_counts = c2.groups
        if weights is not None:
            assert c2.by_group is not None and counts.by_group is not None  # counted per window group
            s_reps = bootstrap.split_count_replicates(
                e, s_cand, p1, p2, pairs, groups, c2.by_group, counts.by_group, weights, d_sae,
                (np.unique(s_cand["er"]), bootstrap.locate_links(e, np.unique(s_cand["er"]), link_req)),
                {"test": opt.gate_test, "fdr": opt.fdr, "min_prob": opt.min_prob, "exclusivity": opt.exclusivity,
                 "min_coverage": opt.min_coverage, "confidence": opt.confidence},
            )  # fmt: skip
            count_reps["splits"] = s_reps
    split_table = splits.splits_table(
        e, s_cand, groups, group_counts, counts.n_active, max_pair, opt.min_coverage, child_ev, opt.gate_test,
        opt.confidence,
    )  # fmt: skip

    # communities
    live = lc.live
    community, ginfo = comm.leiden(
        f_layer,
        f_id,
        live,
        e,
        opt.community_measure,
        opt.community_threshold,
        opt.quality,
        opt.resolution,
        opt.seed,
        backend=opt.leiden_backend,
    )
    vocab = read_vocab(run)
    if ex is not None:
        ex_rows = feature_rows(f_layer, f_id)(ex.column("layer").to_numpy(), ex.column("feature").to_numpy())
        ex_tok = counts.example_tokens
        assert ex_tok is not None  # counted for the example keys
    else:
        ex_rows = ex_tok = np.zeros(0, np.int64)
    comm_table = comm.community_table(f_layer, community, ex_rows, ex_tok, vocab)
    if weights is not None and opt.community_bootstrap > 0 and len(c_rows):
        say(f"analyze: Leiden on {min(opt.community_bootstrap, len(weights))} bootstrap replicates")

        def again(sub: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
            return comm.leiden(f_layer, f_id, live, sub, opt.community_measure, opt.community_threshold, opt.quality,
                               opt.resolution, opt.seed, backend=opt.leiden_backend)  # fmt: skip

        assert counts.by_group is not None  # weights come with window groups
        c_reps = bootstrap.community_count_replicates(
            e, c_rows, bootstrap.locate_links(e, c_rows, link_req), counts.by_group,
            weights[: opt.community_bootstrap], opt.community_measure, again,
        )  # fmt: skip
        count_reps["communities"] = c_reps

    # sample prompt graphs from the stored codes (no model needed)
    from saelineage.feature_table import explanations

    ctx = GraphContext(
        f_layer, f_id, feats.column("act_max").to_numpy().astype(np.float64), community, explanations(run, feats), e
    )
    graphs = sample_graphs(
        counts.samples, ctx, vocab, rel=opt.prompt_rel, measure=opt.prompt_measure, max_nodes=opt.prompt_max_nodes
    )

    write_parquet(run.file(contract.LIFECYCLE), life_table)
    write_parquet(run.file(contract.GATES), gate_table)
    write_parquet(run.file(contract.BEST_PAIRS), best_table)
    write_parquet(run.file(contract.SPLITS), split_table)
    write_parquet(run.file(contract.COMMUNITIES), comm_table)
    write_json(
        run.file(contract.PROMPT_GRAPHS),
        {"rel": opt.prompt_rel, "measure": opt.prompt_measure, "graphs": graphs},
        indent=None,
        allow_nan=False,
    )
    write_lifecycle_html(life_table, run.file(contract.LIFECYCLE_HTML), f"Feature lifecycle of {run.path.name}")
    write_parquet(run.file(contract.FEATURE_ANALYSIS), _feature_analysis(feats, lc, community))
    kinds = gate_table.column("kind").to_pylist()
    points = {
        "gates_and": kinds.count("and"),
        "gates_or": kinds.count("or"),
        "splits": split_table.num_rows,
        "communities": ginfo["communities"],
    }
    count_ci = {k: list(bootstrap.interval(v, points[k])) for k, v in count_reps.items()}
    return {
        "lifecycle": {lab: int((lc.label == lab).sum()) for lab in lifecycle.LABELS},
        "gates": {"and": points["gates_and"], "or": points["gates_or"]},
        "splits": split_table.num_rows,
        "communities": ginfo,
        "prompt_graphs": len(graphs),
        "tokens_validated": counts.n_tokens,
        "intervals": {
            "level": bootstrap.INTERVAL,
            "replicates": 0 if weights is None else len(weights),
            "window_groups": 0 if wg is None else int(wg.max()) + 1,
            **count_ci,
        },
    }
