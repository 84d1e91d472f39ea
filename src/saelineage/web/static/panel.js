// The feature panel beside a graph: what a click on a node opens.

import {api, communityHref, el, featureHref, featureLink, fmt} from './common.js';

function exampleLine(ex) {
  const ctx = el('span', {class: 'ctx'});
  if (ex.truncated_left) ctx.append(el('span', {class: 'ell'}, '…'));
  for (const t of ex.tokens) {
    ctx.append(el('span', {class: t.hit ? 'tok hit' : 'tok', title: t.id === null ? null : `token ${t.id}`}, t.text.replaceAll('\n', '↵')));
  }
  if (ex.truncated_right) ctx.append(el('span', {class: 'ell'}, '…'));
  return el('li', {}, el('span', {class: 'val'}, fmt(ex.value)), ' ', ctx);
}

function neighbourList(title, rows, measure) {
  if (!rows || !rows.length) return el('p', {class: 'note'}, `${title}: none kept`);
  return el('div', {},
    el('h4', {}, title),
    el('ul', {class: 'nb'}, rows.map(e => el('li', {},
      el('span', {class: 'nbv', title: measure}, fmt(e[measure])), ' ', featureLink(e.other)))));
}

/** Fill `panel` with the feature (layer, feature); `measure` orders the neighbour lists. */
export async function showFeaturePanel(panel, layer, feature, {measure = 'jaccard', onCommunity = null} = {}) {
  panel.hidden = false;
  panel.replaceChildren(el('p', {class: 'note'}, `loading ${layer}:${feature}…`));
  try {
    const [f, nb] = await Promise.all([
      api(`/api/features/${layer}/${feature}?examples=6`),
      api(`/api/features/${layer}/${feature}/neighbours?limit=8&sort=${encodeURIComponent(measure)}`)]);
    const close = el('button', {class: 'close', type: 'button', title: 'close', onclick: () => { panel.hidden = true; }}, '×');
    const comm = f.community === null ? 'none' : String(f.community);
    panel.replaceChildren(
      close,
      el('h3', {}, el('span', {class: 'fid'}, `${f.layer}:${f.feature}`)),
      el('p', {class: 'panel-label', id: 'panel-label'}, f.label || '(no label)'),
      el('p', {class: 'meta'}, `density ${fmt(f.density)} · max ${fmt(f.act_max)} · ${f.lifecycle || 'lifecycle n/a'}`),
      el('p', {class: 'actions'},
        el('a', {href: featureHref(f.layer, f.feature), id: 'open-feature', class: 'button'}, 'Open feature page →'),
        f.community !== null && f.community_page !== false ? el('a', {href: communityHref(f.community), class: 'button light',
          onclick: onCommunity ? (e) => { e.preventDefault(); onCommunity(f.community); } : null},
          `community ${comm}`) : null,
        f.neuronpedia ? el('a', {href: f.neuronpedia, target: '_blank', rel: 'noopener noreferrer'}, 'Neuronpedia ↗') : null),
      el('h4', {}, 'Top examples'),
      f.examples.length ? el('ol', {class: 'examples compact'}, f.examples.map(exampleLine))
        : el('p', {class: 'note'}, 'no examples'),
      neighbourList('Upstream', nb.up, measure),
      neighbourList('Downstream', nb.down, measure));
  } catch (err) {
    panel.replaceChildren(el('p', {class: 'error'}, `could not load the feature: ${err.message}`));
  }
}
