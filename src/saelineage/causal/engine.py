"""The batched ablation engine (see ablate.py for what an ablation is).

Window-major: the windows to run are cut into chunks. For a chunk, one clean pass (in
batches) captures, for *every* upstream layer at once, the uncentred residual at its hook,
the codes of the upstream features and of the downstream target features. Then each
(upstream feature, window) job of the chunk becomes one row of an ablated batch: rows of
one batch ablate different features; the pass restarts at hook l from the cached residual
(blocks before l are not run again) and stops at the deepest downstream hook the batch needs.
Windows are sorted by the deepest hook they are needed for, so chunks of shallow pairs stop early.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from saelineage.causal.forward import BlockFormat, capture, resume_from


class Plan:
    """Who needs what: features and targets per layer, pairs per window and per feature."""

    def __init__(self, saes: dict, pairs: np.ndarray, pair_windows: list[np.ndarray]) -> None:
        self.pairs, self.pair_windows = pairs, pair_windows
        self.window_sets = [set(w.tolist()) for w in pair_windows]
        self.src_layers = sorted(set(pairs[:, 0].tolist()))
        self.dst_layers = sorted(set(pairs[:, 2].tolist()))
        self.hook = {L: saes[L].hook for L in set(self.src_layers) | set(self.dst_layers)}
        for l, m in {(int(a), int(b)) for a, b in pairs[:, [0, 2]]}:
            if self.hook[m].order < self.hook[l].order:
                raise ValueError(f"downstream hook {self.hook[m].name} lies before upstream {self.hook[l].name}")
        self.feats = {l: np.unique(pairs[pairs[:, 0] == l, 1]) for l in self.src_layers}
        self.fpos = {l: {int(f): k for k, f in enumerate(v)} for l, v in self.feats.items()}
        self.targets = {m: np.unique(pairs[pairs[:, 2] == m, 3]) for m in self.dst_layers}
        self.tpos = {m: {int(j): k for k, j in enumerate(v)} for m, v in self.targets.items()}
        self.pairs_of_feature: dict[tuple[int, int], list[int]] = {}
        self.pairs_of_window: dict[int, list[int]] = {}
        deepest: dict[int, int] = {}
        for p, (l, f, m, _) in enumerate(pairs.tolist()):
            self.pairs_of_feature.setdefault((l, self.fpos[l][f]), []).append(p)
            for w in pair_windows[p].tolist():
                self.pairs_of_window.setdefault(w, []).append(p)
                deepest[w] = max(deepest.get(w, -1), self.hook[m].order)
        self.feature_deepest = {
            key: max(self.hook[int(pairs[p, 2])].order for p in ps) for key, ps in self.pairs_of_feature.items()
        }
        self.windows = np.array(sorted(deepest, key=lambda w: (deepest[w], w)), dtype=np.int64)


class Engine:
    """Runs the jobs of one Plan chunk by chunk, feeding an accumulator `acc` (see ablate._Acc)."""

    def __init__(
        self,
        adapter,
        saes: dict,
        ids: torch.Tensor,
        mask: np.ndarray,
        plan: Plan,
        acc,
        threshold: float,
        batch_rows: int,
        skip_prefix: bool,
        prune: bool,
        one_feature_per_forward: bool,
        info: dict,
    ) -> None:
        self.adapter, self.saes, self.ids, self.mask, self.plan, self.acc = adapter, saes, ids, mask, plan, acc
        self.threshold, self.batch_rows, self.prune, self.one = threshold, batch_rows, prune, one_feature_per_forward
        self.skip_prefix, self.info = skip_prefix, info
        self.fmt = BlockFormat()
        self.checked: dict[int, bool] = {}  # upstream layer -> restarting there reproduces a full pass
        self.dirs = {l: saes[l].write_directions(plan.feats[l]) for l in plan.src_layers}

    # ---- clean pass ----------------------------------------------------------------------------
    @torch.no_grad()
    def clean(self, W: np.ndarray, src: list[int], dst: list[int]) -> dict:
        """Cached clean state of windows W: x [C,S,d] per src layer, codes per layer, scales, refs."""

        plan, seq, C = self.plan, self.ids.shape[1], len(W)
        mask = torch.from_numpy(self.mask[W])
        st: dict[str, Any] = {
            "x": {},
            "codes_l": {l: torch.zeros(C, seq, len(plan.feats[l])) for l in src},
            "codes_m": {m: torch.zeros(C, seq, len(plan.targets[m])) for m in dst},
            "scale": {},
            "ref": None,
        }
        layers = sorted(set(src) | set(dst), key=lambda L: plan.hook[L].order)
        for r0 in range(0, C, self.batch_rows):
            rows = slice(r0, min(r0 + self.batch_rows, C))
            raw, res = capture(
                self.adapter,
                self.ids[torch.as_tensor(W[rows])],
                [plan.hook[l] for l in src],
                [plan.hook[m] for m in dst],
                self.fmt,
            )
            self.info["forward_passes"] += 1
            if st["ref"] is None:
                st["ref"] = {m: res[plan.hook[m]][0].clone() for m in dst}
            n = rows.stop - rows.start
            for L in layers:
                sae = self.saes[L]
                s = res[plan.hook[L]].reshape(n * seq, -1)
                codes = sae.encode_dense(s)
                if L in src:
                    x = raw[plan.hook[L]]
                    if L not in st["x"]:
                        st["x"][L] = torch.empty((C,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
                    st["x"][L][rows] = x
                    c = codes[:, torch.as_tensor(plan.feats[L], device=codes.device)].float().cpu()
                    st["codes_l"][L][rows] = c.view(n, seq, -1) * mask[rows][..., None]
                    sc = sae.write_scale(s)
                    if sc is not None:
                        st["scale"].setdefault(L, torch.empty(C, seq, dtype=sc.dtype, device=sc.device))[rows] = (
                            sc.view(n, seq)
                        )
                if L in dst:
                    c = codes[:, torch.as_tensor(plan.targets[L], device=codes.device)].float().cpu()
                    st["codes_m"][L][rows] = c.view(n, seq, -1)
                del codes
        st["active"] = {m: ((st["codes_m"][m] > self.threshold) & mask[..., None]).numpy() for m in dst}
        return st

    # ---- one chunk -------------------------------------------------------------------------------
    def chunk(self, W: np.ndarray) -> None:
        plan, acc = self.plan, self.acc
        here = sorted({p for w in W.tolist() for p in plan.pairs_of_window[w]})
        src = sorted({int(plan.pairs[p, 0]) for p in here})
        dst = sorted({int(plan.pairs[p, 2]) for p in here})
        st = self.clean(W, src, dst)
        row = {int(w): r for r, w in enumerate(W)}
        done: set[tuple[int, int]] = set()
        for l in src:
            skip = self._restart_ok(l, st, [m for m in dst if plan.hook[m].order >= plan.hook[l].order])
            fires = (st["codes_l"][l] > 0).any(dim=1).numpy()  # [C, F]: feature fires in window (token set)
            jobs = set()
            for p in here:
                if plan.pairs[p, 0] != l:
                    continue
                k = plan.fpos[l][int(plan.pairs[p, 1])]
                for w in plan.pair_windows[p].tolist():
                    r = row.get(w)
                    if r is not None:
                        if self.prune and not fires[r, k]:
                            continue
                        jobs.add((plan.feature_deepest[(l, k)], k, r))
            self.info["jobs"] = self.info.get("jobs", 0) + len(jobs)
            for batch in self._batches(sorted(jobs)):
                self._run(l, batch, W, st, skip, done)
        # windows not ablated for a pair (its upstream feature is silent there): the drop is exactly 0
        for p in here:
            m, j = int(plan.pairs[p, 2]), int(plan.pairs[p, 3])
            for w in plan.pair_windows[p].tolist():
                r = row.get(w)
                if r is None or (p, r) in done:
                    continue
                t = np.flatnonzero(st["active"][m][r, :, plan.tpos[m][j]])
                c = st["codes_m"][m][r, t, plan.tpos[m][j]].numpy()
                acc.add(p, w, t, c, c.copy())

    def _batches(self, jobs: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
        """Consecutive jobs of the same deepest hook (and, for the baseline, the same feature)."""
        out: list[list[tuple[int, int, int]]] = []
        for job in jobs:
            last = out[-1] if out else None
            if (
                last
                and len(last) < self.batch_rows
                and last[-1][0] == job[0]
                and (not self.one or last[-1][1] == job[1])
            ):
                last.append(job)
            else:
                out.append([job])
        return out

    def _restart_ok(self, l: int, st: dict, dst: list[int]):
        """The BlockFormat to restart at layer l's hook, or None (full passes). Checked once per layer."""
        if not self.skip_prefix or not self.fmt.known or not dst:
            return None
        if l not in self.checked:
            plan, x = self.plan, st["x"][l]
            W0 = self.ids[torch.as_tensor(self._first_window)]
            out = resume_from(self.adapter, W0, plan.hook[l], [plan.hook[m] for m in dst], lambda _: x[:1], self.fmt)
            self.info["forward_passes"] += 1
            ok = True
            for m in dst:
                got, want = out[plan.hook[m]][0], st["ref"][m]
                ok &= bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-6))
            if not ok:
                warnings.warn(
                    f"restarting the forward pass at {plan.hook[l].name} does not reproduce a full pass "
                    "for this model; using full passes (slower).",
                    stacklevel=2,
                )
                self.info["skip_prefix"] = False
            self.checked[l] = ok
        return self.fmt if self.checked[l] else None

    @torch.no_grad()
    def _run(self, l: int, batch: list[tuple[int, int, int]], W: np.ndarray, st: dict, skip, done: set) -> None:
        """One ablated pass: row b ablates feature batch[b][1] of layer l on window W[batch[b][2]]."""
        plan, acc = self.plan, self.acc
        ks = torch.as_tensor([j[1] for j in batch])
        rs = torch.as_tensor([j[2] for j in batch])
        dirs = self.dirs[l]
        a = st["codes_l"][l][rs, :, ks].to(device=dirs.device, dtype=dirs.dtype)  # [B, S]
        if l in st["scale"]:
            a = a * st["scale"][l][rs].to(a.dtype)
        delta = a[..., None] * dirs[ks.to(dirs.device)][:, None, :]  # [B, S, d]
        need = [m for m in sorted({int(plan.pairs[p, 2]) for p in self._pairs_of_batch(l, batch)})]
        outs = [plan.hook[m] for m in need]
        batch_ids = self.ids[torch.as_tensor(W[rs.numpy()])]
        if skip is not None:
            x = st["x"][l]
            out = resume_from(self.adapter, batch_ids, plan.hook[l], outs, lambda _: x[rs] - delta.to(x.dtype), skip)
        else:
            out = resume_from(self.adapter, batch_ids, plan.hook[l], outs, lambda x: x - delta.to(x.dtype), None)
        self.info["forward_passes"] += 1
        self.info["rows"] += len(batch)
        for m in need:
            todo = []  # (row in batch, pair, token positions where its target was active)
            for b, (_, k, r) in enumerate(batch):
                w = int(W[r])
                for p in plan.pairs_of_feature[(l, k)]:
                    if int(plan.pairs[p, 2]) == m and w in plan.window_sets[p]:
                        todo.append((b, p, np.flatnonzero(st["active"][m][r, :, plan.tpos[m][int(plan.pairs[p, 3])]])))
                        done.add((p, r))
                        acc.n_ablated[p] += 1
            n = sum(len(t) for _, _, t in todo)
            if n == 0:
                continue
            bs = torch.as_tensor(np.concatenate([np.full(len(t), b) for b, _, t in todo]))
            ts = torch.as_tensor(np.concatenate([t for _, _, t in todo]))
            ab = self.saes[m].encode_dense(out[plan.hook[m]][bs, ts]).float().cpu()
            o = 0
            for b, p, t in todo:
                j, r = int(plan.pairs[p, 3]), batch[b][2]
                acc.add(p, int(W[r]), t, st["codes_m"][m][r, t, plan.tpos[m][j]].numpy(), ab[o : o + len(t), j].numpy())
                o += len(t)

    def _pairs_of_batch(self, l: int, batch) -> set[int]:
        return {p for _, k, _ in batch for p in self.plan.pairs_of_feature[(l, k)]}

    def run(self, chunk_windows: int, progress=None) -> None:
        W_all = self.plan.windows
        chunks = [W_all[i : i + chunk_windows] for i in range(0, len(W_all), chunk_windows)]
        task = progress.add_task("ablate", total=len(chunks), rate="") if progress else None
        for W in chunks:
            self._first_window = W[:1]
            self.chunk(W)
            self.info["chunks"] = self.info.get("chunks", 0) + 1
            if progress:
                progress.advance(task)
