// The layered feature graph on a canvas: rows = layers (first layer at the bottom), nodes
// coloured by community, edge width by similarity. Hover shows a tooltip and highlights the
// node's community and edges; click selects. Hit-testing uses the row structure (nearest
// row, then binary search on x), so hover stays cheap with thousands of nodes.

import {communityColor, el, fmt} from './common.js';

const PAD = {left: 64, right: 24, top: 24, bottom: 28};

export class LayeredGraph {
  constructor(canvas, tooltip, {onSelect = null, onOpen = null, rowHeight = 64} = {}) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.onSelect = onSelect;
    this.onOpen = onOpen;
    this.rowHeight = rowHeight;
    this.data = null;
    this.hover = null;
    this.selected = null;
    this.focusCommunity = null;
    this.frame = 0;
    canvas.addEventListener('mousemove', e => this._move(e));
    canvas.addEventListener('mouseleave', () => { this._setHover(null); this.tooltip.hidden = true; });
    canvas.addEventListener('click', e => this._click(e));
    canvas.addEventListener('dblclick', e => {
      const n = this._hit(e);
      if (n && this.onOpen) this.onOpen(n);
    });
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
  }

  setData(raw) {
    // the API sends columns (nodes.layer[i], ...) and edges as src/dst/value lists; draw from objects
    const cols = raw.nodes, names = Object.keys(cols), n = names.length ? cols[names[0]].length : 0;
    const nodes = Array.from({length: n}, (_, i) => {
      const o = {id: i};
      for (const k of names) o[k] = cols[k][i];
      return o;
    });
    const edges = raw.edges.src.map((s, i) => [s, raw.edges.dst[i], raw.edges.value[i]]);
    const data = {...raw, nodes, edges};
    this.data = data;
    this.hover = null;
    this.selected = null;
    this.rows = data.layers.map(() => []);
    for (const n of nodes) this.rows[n.row].push(n);
    for (const r of this.rows) r.sort((a, b) => a.pos - b.pos);
    this.adj = nodes.map(() => []);
    data.edges.forEach((e, i) => { this.adj[e[0]].push(i); this.adj[e[1]].push(i); });
    let lo = Infinity, hi = -Infinity;
    for (const e of data.edges) { lo = Math.min(lo, e[2]); hi = Math.max(hi, e[2]); }
    this.vlo = lo; this.vhi = hi > lo ? hi : lo + 1;
    this.resize();
  }

  resize() {
    this.tooltip.hidden = true;
    if (!this.data) return;
    const w = this.canvas.parentElement.clientWidth || 800;
    const nr = Math.max(this.data.layers.length, 1);
    const h = PAD.top + PAD.bottom + Math.max(nr - 1, 1) * this.rowHeight;
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(h * dpr);
    this.canvas.style.width = `${w}px`;
    this.canvas.style.height = `${h}px`;
    this.w = w; this.h = h; this.dpr = dpr;
    const inner = w - PAD.left - PAD.right;
    for (const n of this.data.nodes) {
      n.x = PAD.left + (n.pos + 0.5) / n.n_row * inner;
      n.y = this.rowY(n.row);
    }
    for (const r of this.rows) {
      const spacing = r.length ? inner / r.length : inner;
      const rad = Math.max(1.5, Math.min(7, spacing / 2.2));
      for (const n of r) n.r = Math.max(1.5, Math.min(rad, 2 + 1.3 * Math.log10(1 + 1e4 * (n.density || 0))));
    }
    this.draw();
  }

  rowY(row) {
    const nr = this.data.layers.length;
    return nr <= 1 ? this.h / 2 : this.h - PAD.bottom - row * (this.h - PAD.top - PAD.bottom) / (nr - 1);
  }

  highlightCommunity(c) { this.focusCommunity = c; this.draw(); }

  draw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = 0; this._draw(); });
  }

  _draw() {
    const ctx = this.canvas.getContext('2d');
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.w, this.h);
    const {nodes, edges, layers} = this.data;
    ctx.font = '12px system-ui, sans-serif';
    ctx.fillStyle = '#555';
    ctx.textBaseline = 'middle';
    layers.forEach((l, i) => {
      const y = this.rowY(i);
      ctx.fillText(`L${l}`, 8, y);
      ctx.strokeStyle = '#eee'; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(PAD.left - 8, y); ctx.lineTo(this.w - PAD.right + 8, y); ctx.stroke();
    });
    const focusNode = this.hover ?? this.selected;
    const fc = this.focusCommunity ?? (this.hover ? this.hover.community : null);
    const lit = new Set(focusNode ? this.adj[focusNode.id] : []);
    // edges: bucketed by width so thousands draw in a few strokes
    const buckets = new Map();
    edges.forEach((e, i) => {
      const t = (e[2] - this.vlo) / (this.vhi - this.vlo);
      const wbin = Math.round(t * 6);
      const state = lit.has(i) ? 2 : (focusNode || fc !== null ? 0 : 1);
      const key = `${state}:${wbin}`;
      if (!buckets.has(key)) buckets.set(key, []);
      buckets.get(key).push(e);
    });
    const keys = [...buckets.keys()].sort();
    for (const key of keys) {
      const [state, wbin] = key.split(':').map(Number);
      ctx.lineWidth = 0.4 + wbin * 0.6;
      ctx.strokeStyle = state === 2 ? 'rgba(20,20,20,0.85)' : state === 1 ? 'rgba(90,90,110,0.28)' : 'rgba(90,90,110,0.08)';
      ctx.beginPath();
      for (const e of buckets.get(key)) {
        const a = nodes[e[0]], b = nodes[e[1]];
        ctx.moveTo(a.x, a.y); ctx.lineTo(b.x, b.y);
      }
      ctx.stroke();
    }
    for (const n of nodes) {
      const dim = fc !== null && n.community !== fc && !(focusNode && n === focusNode);
      ctx.fillStyle = communityColor(n.community, dim ? 0.18 : 1);
      ctx.beginPath(); ctx.arc(n.x, n.y, n.r, 0, 2 * Math.PI); ctx.fill();
      if (!dim && n.r > 2.5) { ctx.strokeStyle = 'rgba(0,0,0,0.35)'; ctx.lineWidth = 0.6; ctx.stroke(); }
    }
    for (const n of [this.selected, this.hover]) {
      if (!n) continue;
      ctx.strokeStyle = '#000'; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(n.x, n.y, n.r + 3, 0, 2 * Math.PI); ctx.stroke();
    }
  }

  _hit(e) {
    if (!this.data || !this.data.nodes.length) return null;
    const rect = this.canvas.getBoundingClientRect();
    const x = e.clientX - rect.left, y = e.clientY - rect.top;
    let best = null, bestD = Infinity;
    this.rows.forEach((r, i) => {
      if (!r.length || Math.abs(this.rowY(i) - y) > 12) return;
      let lo = 0, hi = r.length - 1;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (r[mid].x < x) lo = mid + 1; else hi = mid; }
      for (const k of [lo - 1, lo, lo + 1]) {
        const n = r[k];
        if (!n) continue;
        const d = Math.hypot(n.x - x, n.y - y);
        if (d < bestD && d <= Math.max(n.r + 4, 7)) { best = n; bestD = d; }
      }
    });
    return best;
  }

  _setHover(n) {
    if (n === this.hover) return;
    this.hover = n;
    this.canvas.style.cursor = n ? 'pointer' : 'default';
    this.draw();
  }

  _move(e) {
    const n = this._hit(e);
    this._setHover(n);
    const tip = this.tooltip;
    if (!n) { tip.hidden = true; return; }
    tip.replaceChildren(
      el('div', {class: 'tt-id'}, `L${n.layer}:${n.feature}`, n.activation !== undefined ? `  act ${fmt(n.activation)}` : ''),
      el('div', {class: 'tt-label'}, n.label || '(no label)'),
      el('div', {class: 'tt-meta'}, `community ${n.community ?? 'none'} · density ${fmt(n.density)} · ${n.lifecycle || ''}`),
      el('div', {class: 'tt-meta'}, `${this.adj[n.id].length} edges shown · click for details`));
    tip.hidden = false;
    const areaW = this.canvas.parentElement.clientWidth;
    const tw = tip.offsetWidth, th = tip.offsetHeight;
    const left = n.x + 14 + tw > areaW ? n.x - 14 - tw : n.x + 14;
    const top = n.y + 12 + th > this.h ? n.y - 12 - th : n.y + 12;
    tip.style.left = `${Math.max(0, left)}px`;
    tip.style.top = `${Math.max(0, top)}px`;
  }

  _click(e) {
    const n = this._hit(e);
    this.tooltip.hidden = true;
    this.selected = n;
    this.draw();
    if (n && this.onSelect) this.onSelect(n);
  }

  /** Communities in view with node counts, largest first. */
  communities() {
    const counts = new Map();
    for (const n of this.data?.nodes || []) {
      if (n.community === null || n.community === undefined) continue;
      counts.set(n.community, (counts.get(n.community) || 0) + 1);
    }
    return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  }

  selectById(layer, feature) {
    const n = this.data?.nodes.find(x => x.layer === layer && x.feature === feature);
    if (n) { this.selected = n; this.draw(); if (this.onSelect) this.onSelect(n); }
    return n;
  }
}
