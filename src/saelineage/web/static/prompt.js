// Live prompt: tokens of a text, then the graph of the features active on a clicked token.

import {api, el, featureHref, fmt} from './common.js';
import {LayeredGraph} from './layered.js';
import {showFeaturePanel} from './panel.js';

const form = document.getElementById('prompt-form');
const text = document.getElementById('prompt-text');
const tokensBox = document.getElementById('prompt-tokens');
const info = document.getElementById('graph-info');
const panel = document.getElementById('feature-panel');
const graph = new LayeredGraph(document.getElementById('graph-canvas'), document.getElementById('tooltip'), {
  onSelect: n => showFeaturePanel(panel, n.layer, n.feature),
  onOpen: n => { window.location.href = featureHref(n.layer, n.feature); },
  rowHeight: 48,
});

const STATE_TEXT = {idle: 'loads on the first prompt', loading: 'loading in the background…', ready: 'ready',
  unavailable: 'unavailable'};
const stateBox = document.getElementById('model-state');
let current = null;  // [position, button] of the token shown, redrawn when a control changes

/** Show the model's state; poll while it loads in the background (the server started loading it). */
async function watchModel() {
  try {
    const st = await api('/api/prompt/status');
    stateBox.dataset.state = st.state;
    stateBox.textContent = `model: ${STATE_TEXT[st.state] || st.state}` + (st.state === 'unavailable' && st.reason ? ` — ${st.reason}` : '');
    if (st.state === 'loading') setTimeout(watchModel, 1000);
  } catch (err) {
    stateBox.textContent = `model: state unknown (${err.message})`;
  }
}

async function showToken(position, button) {
  current = [position, button];
  for (const b of tokensBox.querySelectorAll('button')) b.classList.toggle('on', b === button);
  info.textContent = 'running the model…';
  try {
    const data = await api('/api/prompt/graph', {
      text: text.value, position, rel: Number(document.getElementById('rel').value) || 0,
      measure: document.getElementById('measure').value,
      edges_per_node: Number(document.getElementById('edges_per_node').value) || 0});
    graph.setData(data);
    info.textContent = `token “${data.token}” (#${position}): ${data.nodes.layer.length} active features, ` +
      `${data.edges.src.length} edges` +
      (data.edges_dropped ? ` · ${fmt(data.edges_dropped)} weaker edges hidden (${data.edges_per_node} per node)` : '') +
      (data.truncated ? ' · strongest activations only' : '') +
      (data.missing ? ` · ${data.missing}` : '');
    info.dataset.ready = '1';
  } catch (err) {
    info.textContent = `could not build the graph: ${err.message}`;
  }
}

for (const id of ['edges_per_node', 'measure']) {
  document.getElementById(id).addEventListener('change', () => { if (current) showToken(...current); });
}

form.addEventListener('submit', async e => {
  e.preventDefault();
  tokensBox.replaceChildren(el('span', {class: 'note'}, 'tokenizing…'));
  try {
    const {tokens} = await api('/api/prompt/tokens', {text: text.value});
    tokensBox.replaceChildren(...tokens.map(t => {
      const b = el('button', {type: 'button', class: 'token', title: `token ${t.id}`}, t.text.replaceAll('\n', '↵') || '∅');
      b.addEventListener('click', () => showToken(t.i, b));
      return b;
    }));
  } catch (err) {
    tokensBox.replaceChildren(el('span', {class: 'error'}, err.message));
  }
});

watchModel();
