// The layered-graph page: filters <-> URL, fetch /api/graph, draw, legend, feature panel.

import {STATIC, api, communityColor, el, featureHref, fmt, graphHref} from './common.js';
import {LayeredGraph} from './layered.js';
import {showFeaturePanel} from './panel.js';

const form = document.getElementById('graph-controls');
const info = document.getElementById('graph-info');
const legend = document.getElementById('legend');
const panel = document.getElementById('feature-panel');
const FIELDS = ['measure', 'min_value', 'layer_min', 'layer_max', 'community', 'max_nodes', 'order', 'edges_per_node'];

const graph = new LayeredGraph(document.getElementById('graph-canvas'), document.getElementById('tooltip'), {
  onSelect: n => showFeaturePanel(panel, n.layer, n.feature, {measure: form.measure.value, onCommunity: setCommunity}),
  onOpen: n => { window.location.href = featureHref(n.layer, n.feature); },
});

function params() {
  const p = new URLSearchParams();
  for (const f of FIELDS) {
    const v = form.elements[f].value.trim();
    if (v !== '') p.set(f, v);
  }
  return p;
}

function fromUrl() {
  const p = new URLSearchParams(window.location.search);
  for (const f of FIELDS) {
    if (p.has(f) && form.elements[f]) form.elements[f].value = p.get(f);
  }
  if (!p.has('min_value') && p.has('community')) form.elements.min_value.value = '';
}

function setCommunity(c) {
  form.elements.community.value = String(c);
  load(true);
}

function renderLegend() {
  const comms = graph.communities();
  legend.replaceChildren();
  if (!comms.length) return;
  legend.append(el('span', {class: 'legend-title'}, `${comms.length} communities in view:`));
  for (const [c, n] of comms.slice(0, 40)) {
    const sw = el('span', {class: 'swatch'});
    sw.style.backgroundColor = communityColor(c);
    legend.append(el('button', {type: 'button', class: 'legend-item', title: `community ${c}: ${n} nodes here — click to filter`,
      onmouseenter: () => graph.highlightCommunity(c), onmouseleave: () => graph.highlightCommunity(null),
      onclick: () => setCommunity(c)}, sw, `${c} (${n})`));
  }
  if (comms.length > 40) legend.append(el('span', {class: 'note'}, ` … ${comms.length - 40} more`));
}

async function load(push = false) {
  const p = params();
  if (push) history.pushState(null, '', graphHref(p));
  info.textContent = 'loading…';
  const t0 = performance.now();
  try {
    const data = await api(`/api/graph?${p}`);
    const t1 = performance.now();
    graph.setData(data);
    renderLegend();
    const nNodes = data.nodes.layer.length, nEdges = data.edges.src.length;
    const parts = [`${nNodes} features, ${nEdges} edges (${data.measure})`];
    if (data.edges_dropped) parts.push(`${fmt(data.edges_dropped)} weaker edges hidden (${data.edges_per_node} per node)`);
    if (data.crossings) {
      parts.push(`crossings ${fmt(data.crossings.shown)} (ordered by id: ${fmt(data.crossings.by_feature)})`);
    }
    if (data.truncated) {
      parts.push(data.community !== undefined && data.community !== null
        ? `the ${fmt(nNodes)} most active members only — narrow the layer range to see others`
        : 'strongest edges only — raise max nodes or the minimum to see others');
    }
    if (data.missing) parts.push(`no edges: ${data.missing}`);
    if (!data.missing && !nNodes) parts.push('nothing passes these filters');
    parts.push(`${Math.round(t1 - t0)} ms`);
    info.textContent = parts.join(' · ');
    info.dataset.nodes = String(nNodes);
    info.dataset.ready = '1';
  } catch (err) {
    info.textContent = `could not load the graph: ${err.message}`;
  }
}

form.addEventListener('submit', e => { e.preventDefault(); load(true); });
for (const f of ['measure', 'order', 'layer_min', 'layer_max']) form.elements[f].addEventListener('change', () => load(true));
window.addEventListener('popstate', () => { fromUrl(); load(false); });
if (STATIC) {  // a static export holds the graph per measure and edges-per-node at the default filters
  for (const f of ['min_value', 'layer_min', 'layer_max', 'max_nodes', 'order']) {
    form.elements[f].disabled = true;
    form.elements[f].title = 'fixed in a static export (saelineage serve RUN has every filter)';
  }
  for (const f of ['edges_per_node', 'community']) form.elements[f].addEventListener('change', () => load(true));
}
fromUrl();
load(false);
window.saelineageGraph = graph;  // for tests and the console
