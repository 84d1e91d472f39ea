// The feature page of a static export: the card, top examples, neighbours, gates and splits of
// templates/feature.html, built from the feature's data file (through api(), see static_api.js).
// Every text from the run goes in through textContent (el()), never as HTML.

import {api, communityHref, el, featureLink, fmt, graphHref, paintSwatches} from './common.js';

const MEASURE_COLS = ['jaccard', 'sufficiency', 'necessity', 'mutual_info', 'pearson', 'act_cosine', 'dec_cosine'];
const HIDDEN_EXTRA = new Set(['act_sum', 'act_sumsq', 'density', 'n_active', 'act_max', 'lifecycle', 'community',
  'community_page', 'error_next_layer', 'error_proj_tokens', 'error_proj', 'error_proj_rel', 'error_proj_base',
  'resid_proj_rel']);
const root = document.getElementById('feature-root');

function card(k, v, s = null) {
  return el('div', {class: 'card'}, el('div', {class: 'k'}, k), el('div', {class: 'v'}, v), s === null ? null : el('div', {class: 's'}, s));
}

function community(f) {
  if (f.community === null || f.community === undefined) return el('span', {class: 'na'}, 'none');
  const sw = el('span', {class: 'swatch', 'data-community': f.community});
  return f.community_page === false ? el('span', {}, sw, String(f.community))
    : el('a', {class: 'comm', href: communityHref(f.community)}, sw, String(f.community));
}

function examples(list) {
  if (!list.length) return el('p', {class: 'note'}, 'No examples: the feature never fired.');
  return el('ol', {class: 'examples', id: 'examples'}, list.map(e => el('li', {},
    el('span', {class: 'val', title: 'activation'}, fmt(e.value)), ' ',
    el('span', {class: 'ctx'}, e.truncated_left ? el('span', {class: 'ell'}, '…') : null,
      e.tokens.map(t => el('span', {class: t.hit ? 'tok hit' : 'tok'}, t.text.replaceAll('\n', '↵'))),
      e.truncated_right ? el('span', {class: 'ell'}, '…') : null),
    el('span', {class: 'where'}, `window ${e.window}, pos ${e.pos}`))));
}

function edges(rows, dir, f) {
  if (!rows || !rows.length) {
    return el('p', {class: 'note', id: `${dir}-none`}, `No ${dir === 'up' ? 'upstream' : 'downstream'} edges were kept for this feature${f.layer !== undefined ? '' : ''}.`);
  }
  const head = el('tr', {}, el('th', {}, dir === 'up' ? 'from (upstream)' : 'to (downstream)'), el('th', {}, 'support'),
    MEASURE_COLS.map(m => el('th', {}, m.replace('_', ' '))));
  const body = rows.map(e => el('tr', {}, el('td', {}, featureLink(e.other)), el('td', {class: 'n'}, fmt(e.n_co)),
    MEASURE_COLS.map(m => el('td', {class: 'n'}, fmt(e[m]),
      e[`${m}_lo`] !== undefined && e[`${m}_lo`] !== null ? el('span', {class: 'lo', title: 'Wilson 95% lower bound'}, ` ≥${fmt(e[`${m}_lo`], 2)}`) : null))));
  return el('div', {class: 'scroll'}, el('table', {class: 'grid edges', id: `${dir}-table`}, el('thead', {}, head), el('tbody', {}, body)));
}

function gates(rows) {
  if (!rows.length) return el('p', {class: 'note'}, 'This feature is in no gate (or the export does not list it).');
  const ref = (layer, feature, label) => featureLink({layer, feature, label});
  return el('table', {class: 'grid', id: 'gates-table'},
    el('thead', {}, el('tr', {}, ['kind', 'child', 'parent a', 'parent b', 'support', 'P(child | condition)', 'P(condition | child)'].map(h => el('th', {}, h)))),
    el('tbody', {}, rows.map(g => el('tr', {},
      el('td', {}, el('span', {class: `kind ${g.kind === 'and' ? 'and' : 'or'}`}, String(g.kind).toUpperCase())),
      el('td', {}, ref(g.layer, g.feature, g.child_label)), el('td', {}, ref(g.parent_layer, g.parent_a, g.a_label)),
      el('td', {}, ref(g.parent_layer, g.parent_b, g.b_label)), el('td', {class: 'n'}, fmt(g.support)),
      el('td', {class: 'n'}, fmt(g.score_forward)), el('td', {class: 'n'}, fmt(g.score_backward))))));
}

function splits(rows) {
  if (!rows.length) return el('p', {class: 'note'}, 'This feature takes part in no split.');
  return el('table', {class: 'grid', id: 'splits-table'},
    el('thead', {}, el('tr', {}, el('th', {}, 'parent'), el('th', {}, 'children'))),
    el('tbody', {}, rows.map(s => el('tr', {}, el('td', {}, s.parent ? featureLink(s.parent) : '—'),
      el('td', {}, s.children.map(c => [c ? featureLink(c) : '—', el('br')]))))));
}

async function main() {
  const q = new URLSearchParams(window.location.search);
  const layer = Number(q.get('l')), feature = Number(q.get('f'));
  if (!q.has('l') || !q.has('f') || !Number.isInteger(layer) || !Number.isInteger(feature)) {
    root.replaceChildren(el('p', {class: 'error'}, 'No feature given: open a feature from the graph or a table (feature.html?l=LAYER&f=FEATURE).'));
    return;
  }
  try {
    const [f, nb, rel] = await Promise.all([
      api(`/api/features/${layer}/${feature}?examples=100`),
      api(`/api/features/${layer}/${feature}/neighbours?limit=500&sort=jaccard`),
      api(`/api/features/${layer}/${feature}/relations`)]);
    document.title = `Feature ${layer}:${feature} · saelineage`;
    const extra = Object.entries(f.extra || {}).filter(([k, v]) => !HIDDEN_EXTRA.has(k) && v !== null);
    root.replaceChildren(
      el('div', {class: 'feature-head'},
        el('h1', {}, el('span', {class: 'fid'}, `${f.layer}:${f.feature}`), ' ', el('span', {class: 'flabel', id: 'feature-label'}, f.label || '(no label)')),
        el('p', {class: 'sub'}, `label: ${f.label_source}`, f.label_source !== 'auto' && f.auto_label ? ` · top tokens ${f.auto_label}` : '',
          f.neuronpedia ? [' · ', el('a', {href: f.neuronpedia, rel: 'noopener noreferrer', target: '_blank', id: 'neuronpedia-link'}, 'Neuronpedia ↗')] : null,
          f.community !== null && f.community_page !== false ? [' · ', el('a', {href: graphHref(`community=${Number(f.community)}&min_value=`)}, 'in the graph')] : null)),
      el('section', {class: 'cards'},
        card('density', fmt(f.density), `${fmt(f.n_active)} tokens`),
        card('max activation', fmt(f.act_max), `mean ${fmt(f.act_mean)} when active`),
        card('lifecycle', f.lifecycle || '—'),
        el('div', {class: 'card'}, el('div', {class: 'k'}, 'community'), el('div', {class: 'v'}, community(f))),
        extra.map(([k, v]) => card(k.replaceAll('_', ' '), fmt(v)))),
      el('h2', {}, 'Top activating examples'), examples(f.examples),
      el('h2', {}, 'Upstream ', el('span', {class: 'h-sub'}, 'layer before · strongest by jaccard')), edges(nb.up, 'up', f),
      el('h2', {}, 'Downstream ', el('span', {class: 'h-sub'}, 'layer after · strongest by jaccard')), edges(nb.down, 'down', f),
      el('h2', {}, 'Gates'), gates(rel.gates),
      rel.gates_total > rel.gates.length ? el('p', {class: 'note'}, `the ${rel.gates.length} of ${fmt(rel.gates_total)} gates with the largest support`) : null,
      el('h2', {}, 'Splits'), splits(rel.splits));
    paintSwatches(root);
    root.dataset.ready = '1';
  } catch (err) {
    root.replaceChildren(el('p', {class: 'error', id: 'feature-error'}, err.message));
    root.dataset.ready = 'error';
  }
}

main();
