"""The browser's query cache: one DuckDB file (+ token arrays) built from a run's files.

The run's Parquet files are written in the order their stage finds convenient (edges by
source feature, examples by feature, ...). The browser needs other orders too (edges by
*target* feature, examples by token, the strongest edges of each layer pair), so at start-up
it copies what it needs into tables sorted for each lookup. DuckDB's per-row-group min/max
statistics then answer every request by reading a few row groups, never a whole table.

The features table is `feature_table.read_features` (collect's features.parquet joined with
analyze's and ablate's per-feature tables in Arrow: on 737k features that plus the copy into
DuckDB takes about 0.45 s, a LEFT JOIN of the Parquet files inside DuckDB about 0.6 s) plus the
browser's label columns.

The cache is keyed by the content of every input file: the digest its stage recorded (size and
mtime for a file written before checksums) and the manifest's bytes. So a cache built from other
data (another run's, or this run's before a stage rewrote a file) is never used, even when sizes
and mtimes agree. It lives in ``RUN/.browser-cache/`` (or the user cache when the run is
read-only), is written to a temporary name and renamed, records the digest of each of its own
files (``sums-SIG.json``, checked when the cache is opened: a damaged cache is built again), and
is rebuilt automatically when a stage rewrites its output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from saelineage import checksum, contract
from saelineage.config import usable_cpus
from saelineage.data.finalize import read_vocab
from saelineage.feature_table import JOINED_FILES, read_features
from saelineage.query.arrays import write_arrays
from saelineage.run import RunDir, parquet_file, read_parquet, read_verified
from saelineage.run import present as is_present

CACHE_VERSION = 7
MEASURES = contract.EDGE_MEASURES
"""Edge measures (docs/design.md §4), in the order the browser lists them."""
TABLE_FILES = (
    "features",
    "examples",
    "edges",
    "gates",
    "splits",
    "communities",
    "lifecycle",
    "ablations",
    "feature_links",
    "labels",
)
GRAPH_TOP_PER_PAIR = 2500
"""Strongest edges kept per (measure, layer pair) for the layered graph (the view shows ≤ 2,000 nodes)."""
HIST_BINS = 40


def _sql_str(path: Path) -> str:
    """A file path as a SQL string literal (paths come from the run directory, never from requests)."""
    return "'" + str(path).replace("'", "''") + "'"


def input_files(run: RunDir) -> list[Path]:
    files = [run.manifest_path, run.file(contract.VOCAB)] + [run.file(f"{t}.parquet") for t in TABLE_FILES]
    files += [run.file(name) for name in JOINED_FILES]
    if run.activations.is_dir():
        files += sorted(run.activations.glob("shard-*.safetensors"))
    return files


def signature(run: RunDir) -> str:
    """Hash of what the cache is built from (called every few seconds while serving: no file but
    the manifest is read). Each input counts by the digest its stage recorded, else (a run written
    before checksums, a stage still running) by its size and mtime; the manifest by its bytes."""
    parts: list[Any] = [CACHE_VERSION]
    for p in input_files(run):
        try:
            if p == run.manifest_path:
                parts.append((p.name, checksum.digest(p.read_bytes())))
                continue
            st = p.stat()
            rec = checksum.expected(p)
            parts.append((p.name, rec[1]) if rec is not None else (p.name, st.st_size, st.st_mtime_ns))
        except OSError:
            parts.append((p.name, None))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def cache_dir_for(run: RunDir) -> Path:
    """RUN/.browser-cache when writable, else a per-run folder in the user cache."""
    here = run.path / contract.BROWSER_CACHE
    try:
        here.mkdir(exist_ok=True)
        probe = here / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return here
    except OSError:
        base = Path(os.environ.get("SAELINEAGE_CACHE", Path.home() / ".cache" / "saelineage")) / "browser"
        key = hashlib.sha256(str(run.path.resolve()).encode()).hexdigest()[:16]
        (base / key).mkdir(parents=True, exist_ok=True)
        return base / key


class CacheFiles:
    """Paths of one cache generation."""

    def __init__(self, folder: Path, sig: str):
        self.folder, self.sig = folder, sig
        self.db = folder / f"cache-{sig}.duckdb"
        self.tokens = folder / f"tokens-{sig}.npz"
        self.arrays = folder / f"arrays-{sig}"
        self.sums = folder / f"sums-{sig}.json"

    def complete(self) -> bool:
        return (
            self.db.is_file() and self.tokens.is_file() and (self.arrays / "feat_key.npy").is_file()
        ) and self.sums.is_file()

    def members(self) -> list[Path]:
        """Every file of this generation but the sums themselves, in a fixed order."""
        return (
            [self.db, self.tokens, *sorted(self.arrays.iterdir())] if self.arrays.is_dir() else [self.db, self.tokens]
        )

    def digests(self) -> dict[str, str]:
        """Digest of each member now, by its name relative to the cache folder."""
        return {str(p.relative_to(self.folder)): checksum.digest_file(p) for p in self.members() if p.is_file()}

    def damage(self) -> str:
        """ "" when every member holds what was written from the inputs of this signature, else what
        differs: another build's files under this name (stale), or the first few damaged names."""
        try:
            sums = json.loads(self.sums.read_bytes())
            built_from, want = sums["signature"], sums["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{self.sums.name} is unreadable"
        if built_from != self.sig:
            return f"stale: built from other inputs ({built_from})"
        got = self.digests()
        bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") if bad else ""


def stale_generations(folder: Path, sig: str) -> list[Path]:
    """Cache files of generations other than `sig` (built from other inputs: never used)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.name.startswith(("cache-", "tokens-", "arrays-", "sums-")) and sig not in p.name
    )


def ensure_cache(run: RunDir, folder: Path | None = None) -> CacheFiles:
    """Return an up-to-date cache for `run`, building it when the inputs changed or when a file of
    the cache no longer holds what was written (checked once per opening: ~0.1 s per GB)."""
    folder = folder or cache_dir_for(run)
    folder.mkdir(parents=True, exist_ok=True)
    files = CacheFiles(folder, signature(run))
    damage = files.damage() if files.complete() else None
    if damage:
        from saelineage.progress import console

        console.print(f"[yellow]the browser's cache in {folder} is damaged ({damage}); building it again.[/]")
    if damage is None or damage:
        build_cache(run, files)
    for p in stale_generations(folder, files.sig):
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass
    return files


# ---- tokens of every window -------------------------------------------------------------


def read_window_tokens(run: RunDir) -> dict[str, np.ndarray]:
    """Token ids, window ids and positions of every stored token, in store order (no codes read;
    each shard checked against collect's checksum by `store.read_shard`)."""
    from saelineage.data.store import collected_shards, read_shard

    toks, wins, poss = [], [], []
    if run.activations.is_dir():
        for p in collected_shards(run):
            shard = read_shard(p, layers=[])
            toks.append(shard.tokens)
            wins.append(shard.window)
            poss.append(shard.pos)
    if not toks:
        z = np.zeros(0, np.int32)
        return {"tokens": z, "window": z, "pos": z}
    tokens, window, pos = (np.concatenate(x).astype(np.int32) for x in (toks, wins, poss))
    if _is_sorted(window, pos):  # store order is (window, pos) already
        return {"tokens": tokens, "window": window, "pos": pos}
    order = lexorder(window, pos)
    return {"tokens": tokens[order], "window": window[order], "pos": pos[order]}


def token_at(arrays: dict[str, np.ndarray], window: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Token id at each (window, pos); -1 where the store does not hold it."""
    wins, poss, toks = arrays["window"], arrays["pos"], arrays["tokens"]
    window, pos = np.asarray(window, np.int64), np.asarray(pos, np.int64)
    out = np.full(len(window), -1, np.int64)
    if len(wins) == 0 or len(window) == 0:
        return out
    n_win = int(wins[-1]) + 1
    start = np.searchsorted(wins, np.arange(n_win + 1))
    ok = (window >= 0) & (window < n_win)
    w = np.where(ok, window, 0)
    i = start[w] + pos - poss[np.minimum(start[w], len(poss) - 1)]  # windows hold consecutive positions
    ok &= (i >= start[w]) & (i < start[w + 1])
    i = np.where(ok, i, 0)
    ok &= (wins[i] == window) & (poss[i] == pos)
    out[ok] = toks[i[ok]]
    return out


# ---- build ------------------------------------------------------------------------------


def build_cache(run: RunDir, files: CacheFiles) -> None:
    """Build the DuckDB cache and token arrays for `run` into `files` (atomic renames)."""
    arrays = read_window_tokens(run)
    tmp_tok = files.folder / f".tokens-{files.sig}.tmp-{os.getpid()}.npz"
    np.savez(tmp_tok, **arrays)  # type: ignore[arg-type]  # numpy stub: a key could be allow_pickle
    fd, tmp_name = tempfile.mkstemp(prefix=f".cache-{files.sig}.", suffix=f".tmp-{os.getpid()}", dir=files.folder)
    os.close(fd)
    os.unlink(tmp_name)  # duckdb wants to create the file itself
    tmp_arrays = files.folder / f".arrays-{files.sig}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_arrays, ignore_errors=True)
    con = duckdb.connect(tmp_name)
    try:
        con.execute(f"SET threads={usable_cpus()}")
        _build_tables(con, run, arrays)
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        write_arrays(con, tmp_arrays, tables)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    files.sums.unlink(missing_ok=True)  # the generation is incomplete until its sums are written
    os.replace(tmp_tok, files.tokens)
    os.replace(tmp_name, files.db)
    shutil.rmtree(files.arrays, ignore_errors=True)
    os.replace(tmp_arrays, files.arrays)
    tmp_sums = files.folder / f".sums-{files.sig}.tmp-{os.getpid()}"
    tmp_sums.write_text(json.dumps({"signature": files.sig, "files": files.digests()}, indent=1))
    os.replace(tmp_sums, files.sums)


def _build_tables(con: duckdb.DuckDBPyConnection, run: RunDir, arrays: dict[str, np.ndarray]) -> None:
    present = {t: run.file(f"{t}.parquet") for t in TABLE_FILES if is_present(run.file(f"{t}.parquet"))}
    con.execute("CREATE TABLE meta (key VARCHAR, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('tables', ?)", [json.dumps(sorted(present))])
    if "features" in present:
        _build_features(con, run, present)
    if "examples" in present:
        _build_examples(con, present["examples"], arrays, read_vocab(run))
    if "features" in present and "examples" in present:
        con.execute(
            "UPDATE features f SET auto_label = a.label FROM auto_labels a "
            "WHERE f.layer = a.layer AND f.feature = a.feature"
        )
    if "edges" in present:
        _build_edges(con, present["edges"])
    for t in ("gates", "splits", "communities", "lifecycle", "ablations", "feature_links"):
        if t in present:
            read_verified(present[t])  # DuckDB reads the file itself: check its bytes first
            con.execute(f"CREATE TABLE {t} AS SELECT * FROM read_parquet({_sql_str(present[t])})")


def _build_features(con: duckdb.DuckDBPyConnection, run: RunDir, present: dict[str, Path]) -> None:
    feats = read_features(run)
    if "explanation" in feats.column_names:  # the always-empty column analyze wrote before labels.parquet
        feats = feats.drop_columns(["explanation"])
    extra = []
    if "lifecycle" not in feats.column_names:
        extra.append("CAST(NULL AS VARCHAR) AS lifecycle")
    if "community" not in feats.column_names:
        extra.append("CAST(NULL AS BIGINT) AS community")
    sel = ", ".join(["*"] + extra)
    # features.parquet is written in (layer, feature) order: sorting again would cost more than the join
    order = "" if _is_sorted(*(feats.column(c).to_numpy() for c in contract.KEY)) else " ORDER BY layer, feature"
    con.register("feat_in", feats)
    con.execute(
        f"CREATE TABLE features AS SELECT {sel}, CAST(NULL AS VARCHAR) AS auto_label, "
        f"CAST(NULL AS VARCHAR) AS imported_label FROM feat_in{order}"
    )
    con.unregister("feat_in")
    if "labels" in present:
        read_verified(present["labels"])  # DuckDB reads the file itself: check its bytes first
        con.execute(f"""UPDATE features f SET imported_label = l.explanation
            FROM (SELECT layer, feature, first(explanation) AS explanation
                  FROM read_parquet({_sql_str(present["labels"])}) GROUP BY layer, feature) l
            WHERE f.layer = l.layer AND f.feature = l.feature""")


def lexorder(*keys: np.ndarray) -> np.ndarray:
    """Stable lexicographic order, first key most significant (np.lexsort, but several times faster here)."""
    order = np.arange(len(keys[0]))
    for k in reversed(keys):
        order = order[np.argsort(k[order], kind="stable")]
    return order


def _is_sorted(*keys: np.ndarray) -> bool:
    """Whether rows are in lexicographic order of `keys` (first key most significant)."""
    if len(keys[0]) < 2:
        return True
    ok = np.ones(len(keys[0]) - 1, bool)  # rows i, i+1 ordered on the keys compared so far and tied before
    tied = np.ones(len(keys[0]) - 1, bool)
    for k in keys:
        a, b = k[:-1], k[1:]
        ok &= ~tied | (a <= b)
        tied &= a == b
    return bool(ok.all())


def _build_examples(
    con: duckdb.DuckDBPyConnection, path: Path, arrays: dict[str, np.ndarray], vocab: list[str] | None
) -> None:
    ex = read_parquet(path, columns=["layer", "feature", "rank", "value", "window", "pos"])
    cols = {c: ex.column(c).to_numpy() for c in ("layer", "feature", "rank")}
    if not _is_sorted(cols["layer"], cols["feature"], cols["rank"]):
        ex = ex.take(pa.array(lexorder(cols["layer"], cols["feature"], cols["rank"])))
    tok = token_at(arrays, ex.column("window").to_numpy(), ex.column("pos").to_numpy())
    ex = ex.append_column("token", pa.array(tok, pa.int64()))
    con.register("ex_in", ex)
    con.execute("CREATE TABLE examples AS SELECT * FROM ex_in")
    con.unregister("ex_in")
    keep = np.nonzero(tok >= 0)[0]
    by_tok = ex.select(["token", "layer", "feature", "value"]).take(
        pa.array(keep[np.argsort(tok[keep], kind="stable")])
    )
    con.register("tok_in", by_tok)
    con.execute("CREATE TABLE ex_tok AS SELECT * FROM tok_in")
    con.unregister("tok_in")
    _auto_labels(con, ex.select(["layer", "feature", "value", "token"]), vocab)


def _auto_labels(con: duckdb.DuckDBPyConnection, ex: pa.Table, vocab: list[str] | None) -> None:
    """Label every feature by the tokens it fires on most among its top examples.

    Ties go to the token seen at the better rank. Vectorised over a [features, K] matrix of the
    examples' tokens (examples are in (layer, feature, rank) order, so rank order = value order)."""
    layer, feat = ex.column("layer").to_numpy().astype(np.int64), ex.column("feature").to_numpy().astype(np.int64)
    tok = ex.column("token").to_numpy()
    con.execute("CREATE TABLE auto_labels (layer BIGINT, feature BIGINT, label VARCHAR)")
    if not len(tok):
        return
    new = np.ones(len(tok), bool)
    new[1:] = (layer[1:] != layer[:-1]) | (feat[1:] != feat[:-1])
    row = np.cumsum(new) - 1
    starts = np.nonzero(new)[0]
    col = np.arange(len(tok)) - starts[row]
    k = int(col.max()) + 1
    mat = np.full((len(starts), k), -1, np.int64)
    mat[row, col] = tok
    order = np.argsort(mat, axis=1, kind="stable")
    st = np.take_along_axis(mat, order, 1)
    run_start = np.ones_like(st, bool)
    run_start[:, 1:] = st[:, 1:] != st[:, :-1]
    # run length at each run start: distance to the next run start in the row
    idx = np.where(run_start, np.arange(k)[None, :], k)
    nxt = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
    nxt = np.concatenate([nxt[:, 1:], np.full((len(st), 1), k)], axis=1)
    count = nxt - np.arange(k)[None, :]
    score = np.where(run_start & (st >= 0), count * (k + 1) - order, -1)  # more often first, then earlier rank
    best = np.argsort(-score, axis=1, kind="stable")[:, :3]
    top_tok = np.take_along_axis(st, best, 1)
    top_ok = np.take_along_axis(score, best, 1) >= 0
    quoted: dict[int, str] = {}

    def q(t: int) -> str:
        if t not in quoted:
            quoted[t] = json.dumps(token_text(vocab, t), ensure_ascii=False)
        return quoted[t]

    labels = [" · ".join(q(t) for t, ok in zip(ts, oks) if ok) for ts, oks in zip(top_tok.tolist(), top_ok.tolist())]
    con.register("auto_in", pa.table({"layer": layer[starts], "feature": feat[starts], "label": labels}))
    con.execute("INSERT INTO auto_labels SELECT * FROM auto_in WHERE label <> ''")
    con.unregister("auto_in")


def _build_edges(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    src = _sql_str(path)
    keys_file = parquet_file(path)  # verified; DuckDB then reads the same (checked) file for the table
    keys = keys_file.read(columns=["src_layer", "src", "dst_layer", "dst"])
    sl, s, dl, d = (keys.column(c).to_numpy().astype(np.int64) for c in ("src_layer", "src", "dst_layer", "dst"))
    order = "" if _is_sorted(sl, s, dl, d) else " ORDER BY src_layer, src, dst_layer, dst"
    con.execute(f"CREATE TABLE edges_dn AS SELECT * FROM read_parquet({src}){order}")
    if order:
        keys = con.execute("SELECT src_layer, src, dst_layer, dst FROM edges_dn").fetchnumpy()
        sl, s, dl, d = (np.asarray(keys[c]).astype(np.int64) for c in ("src_layer", "src", "dst_layer", "dst"))
    measures = [m for m in MEASURES if m in set(keys_file.schema_arrow.names)]
    pair = sl * (1 << 32) + dl
    pair_ids, inv = np.unique(pair, return_inverse=True)
    grouped = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[grouped], np.arange(len(pair_ids) + 1))
    top_parts, hist_rows = [], []
    for m in measures:
        v = np.asarray(con.execute(f"SELECT CAST({m} AS DOUBLE) AS v FROM edges_dn").fetchnumpy()["v"], np.float64)
        v = np.ma.filled(v, np.nan) if np.ma.isMaskedArray(v) else v
        for g in range(len(pair_ids)):  # strongest GRAPH_TOP_PER_PAIR edges of each layer pair
            idx = grouped[bounds[g] : bounds[g + 1]]
            idx = idx[np.isfinite(v[idx])]
            if len(idx) > GRAPH_TOP_PER_PAIR:
                idx = idx[np.argpartition(-v[idx], GRAPH_TOP_PER_PAIR - 1)[:GRAPH_TOP_PER_PAIR]]
            idx = idx[lexorder(-v[idx], s[idx], d[idx])]
            top_parts.append(
                pa.table(
                    {
                        "measure": pa.array([m] * len(idx), pa.string()),
                        "src_layer": sl[idx],
                        "dst_layer": dl[idx],
                        "rk": np.arange(len(idx), dtype=np.int64),
                        "src": s[idx],
                        "dst": d[idx],
                        "value": v[idx],
                    }
                )
            )
        fin = v[np.isfinite(v)]
        if len(fin):
            lo, hi = float(fin.min()), float(fin.max())
            counts, edges = np.histogram(fin, bins=HIST_BINS, range=(lo, hi if hi > lo else lo + 1))
            hist_rows += [(m, i, float(edges[i]), float(edges[i + 1]), int(c)) for i, c in enumerate(counts)]
    top = (
        pa.concat_tables(top_parts)
        if top_parts
        else pa.table(
            {
                "measure": pa.array([], pa.string()),
                **{c: pa.array([], pa.int64()) for c in ("src_layer", "dst_layer", "rk", "src", "dst")},
                "value": pa.array([], pa.float64()),
            }
        )
    )
    con.register("top_in", top)
    con.execute("CREATE TABLE graph_top AS SELECT * FROM top_in")  # already in (measure, pair, rk) order
    con.unregister("top_in")
    con.execute("CREATE TABLE hist (measure VARCHAR, bin BIGINT, lo DOUBLE, hi DOUBLE, n BIGINT)")
    if hist_rows:
        con.executemany("INSERT INTO hist VALUES (?, ?, ?, ?, ?)", hist_rows)


# ---- vocabulary -------------------------------------------------------------------------


def token_text(vocab: list[str] | None, token: int) -> str:
    if vocab is not None and 0 <= token < len(vocab):
        return vocab[token]
    return f"#{token}"
