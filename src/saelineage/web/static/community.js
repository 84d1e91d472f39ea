// Community page: the community's layered subgraph.

import {api, featureHref, fmt, paintSwatches} from './common.js';
import {LayeredGraph} from './layered.js';
import {showFeaturePanel} from './panel.js';

const area = document.getElementById('graph-area');
const info = document.getElementById('graph-info');
const panel = document.getElementById('feature-panel');
const c = Number(area.dataset.community);
const graph = new LayeredGraph(document.getElementById('graph-canvas'), document.getElementById('tooltip'), {
  onSelect: n => showFeaturePanel(panel, n.layer, n.feature),
  onOpen: n => { window.location.href = featureHref(n.layer, n.feature); },
  rowHeight: 56,
});

api(`/api/graph?community=${c}&max_nodes=2000`).then(data => {
  // only the layers the community spans
  const used = [...new Set(data.nodes.row)].sort((a, b) => a - b);
  const remap = new Map(used.map((r, i) => [r, i]));
  data.layers = used.map(r => data.layers[r]);
  data.nodes.row = data.nodes.row.map(r => remap.get(r));
  graph.setData(data);
  info.textContent = `${data.nodes.row.length} features, ${data.edges.src.length} edges` +
    (data.crossings ? ` · crossings ${fmt(data.crossings.shown)} (by id: ${fmt(data.crossings.by_feature)})` : '') +
    (data.missing ? ` · ${data.missing}` : '');
  info.dataset.ready = '1';
}).catch(err => { info.textContent = `could not load the subgraph: ${err.message}`; });
paintSwatches();
