// Shared helpers. Text from the run (labels, tokens) only ever enters the page through
// textContent / createTextNode, or inside markup the server rendered with autoescaping (panel.js):
// never innerHTML.

import {staticApi} from './static_api.js';

/** True on the pages of a static export (saelineage export-site): data comes from JSON files. */
export const STATIC = document.body.dataset.site === 'static';

/** Create an element; strings among the children become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = String(v);
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** GET/POST JSON from our own API; throws an Error with the server's message on failure. */
export async function api(path, body) {
  if (STATIC) return staticApi(path, body);
  const opts = body === undefined ? {} : {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const d = data.detail;
    throw new Error(typeof d === 'string' ? d : (Array.isArray(d) ? d.map(x => x.msg).join('; ') : `HTTP ${r.status}`));
  }
  return data;
}

export function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return 'n/a';
  if (typeof v !== 'number') return String(v);
  if (Number.isInteger(v)) return v.toLocaleString();
  return Number(v.toPrecision(digits)).toString();
}

export function featureHref(layer, feature) {
  return STATIC ? `feature-${Number(layer)}-${Number(feature)}.html` : `/feature/${Number(layer)}/${Number(feature)}`;
}

export function communityHref(c) {
  return STATIC ? `community-${Number(c)}.html` : `/community/${Number(c)}`;
}

/** URL of the layered graph page with the given query. */
export function graphHref(query) {
  return `${STATIC ? 'graph.html' : '/graph'}?${query}`;
}

/** Link to a feature: id plus label, as text. */
export function featureLink(f) {
  return el('a', {class: 'fref', href: featureHref(f.layer, f.feature)},
    el('span', {class: 'fid'}, `${f.layer}:${f.feature}`), ' ',
    el('span', {class: 'flabel'}, f.label || ''));
}

// ---- colours: a palette for hundreds of communities ---------------------------------
// Hue steps by the golden angle (consecutive ids land far apart on the colour wheel) and
// three lightness/chroma levels cycle on top, in OKLab space so steps look even. Colours are
// stable per community id across views; the hovered community is highlighted by the graph.

function oklchToRgb(L, C, hDeg) {
  const h = hDeg * Math.PI / 180;
  const a = C * Math.cos(h), b = C * Math.sin(h);
  const l_ = L + 0.3963377774 * a + 0.2158037573 * b;
  const m_ = L - 0.1055613458 * a - 0.0638541728 * b;
  const s_ = L - 0.0894841775 * a - 1.2914855480 * b;
  const l = l_ ** 3, m = m_ ** 3, s = s_ ** 3;
  const lin = [
    4.0767416621 * l - 3.3077115913 * m + 0.2309699292 * s,
    -1.2684380046 * l + 2.6097574011 * m - 0.3413193965 * s,
    -0.0041960863 * l - 0.7034186147 * m + 1.7076147010 * s];
  return lin.map(x => x <= 0.0031308 ? 12.92 * x : 1.055 * Math.pow(Math.max(x, 0), 1 / 2.4) - 0.055);
}

const LEVELS = [[0.70, 0.15], [0.55, 0.16], [0.82, 0.11]];
const cache = new Map();

export function communityRgb(c) {
  if (c === null || c === undefined || c < 0) return [150, 150, 150];
  if (cache.has(c)) return cache.get(c);
  const hue = (c * 137.50776) % 360;
  const [L, C0] = LEVELS[c % 3];
  let rgb, C = C0;
  for (let i = 0; i < 8; i++) {  // pull chroma in until the colour fits in sRGB
    rgb = oklchToRgb(L, C, hue);
    if (rgb.every(x => x >= 0 && x <= 1)) break;
    C *= 0.85;
  }
  const out = rgb.map(x => Math.round(Math.min(1, Math.max(0, x)) * 255));
  cache.set(c, out);
  return out;
}

export function communityColor(c, alpha = 1) {
  const [r, g, b] = communityRgb(c);
  return `rgba(${r},${g},${b},${alpha})`;
}

/** Colour the small swatches the templates place next to community ids. */
export function paintSwatches(root = document) {
  for (const s of root.querySelectorAll('.swatch[data-community]')) {
    s.style.backgroundColor = communityColor(Number(s.dataset.community));
  }
}

paintSwatches();
