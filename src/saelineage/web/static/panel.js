// The feature panel beside a graph: what a click on a node opens. It shows the top of the feature's
// page as the server renders it (templates/_feature_summary.html): live, the server renders that part
// alone (/feature/L/F/card); in a static export, it is read from the feature's page, so the export
// holds each feature's card once. The markup is the server's, autoescaped, and parsed by DOMParser,
// where nothing runs; the CSP forbids inline scripts besides.

import {STATIC, communityHref, el, featureHref, fmt, paintSwatches} from './common.js';
import {siteInfo} from './static_api.js';

const EXAMPLES = 6, NEIGHBOURS = 8;

/** The feature's summary as a parsed document: its card (#feature-card) and edge tables (#up-table, ...). */
async function summary(layer, feature, measure) {
  const url = STATIC ? featureHref(layer, feature)
    : `/feature/${layer}/${feature}/card?sort=${encodeURIComponent(measure)}&examples=${EXAMPLES}&neighbours=${NEIGHBOURS}`;
  const r = await fetch(url);
  const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
  if (!r.ok) {
    const why = doc.querySelector('.error-message');
    throw new Error(why ? why.textContent.trim()
      : (STATIC ? `feature ${layer}:${feature} has no page in this export (it holds ${(await siteInfo()).selection} features)` : `HTTP ${r.status}`));
  }
  return doc;
}

/** An edge table of the summary as a short list, strongest by `measure` first. A static page holds its
 * edges by jaccard: re-ordering them is what a server would show for the strongest few. */
function neighbourList(title, doc, dir, measure) {
  const table = doc.getElementById(`${dir}-table`);
  if (!table) {
    const none = doc.getElementById(`${dir}-none`);
    return el('p', {class: 'note'}, `${title}: ${none ? none.textContent : 'none kept'}`);
  }
  const col = [...table.tHead.rows[0].cells].findIndex(th => th.dataset.m === measure);
  const rows = [...table.tBodies[0].rows].map(tr => {
    const v = col < 0 ? NaN : parseFloat(tr.cells[col].textContent);
    return {link: tr.cells[0].querySelector('a.fref'), v: Number.isNaN(v) ? -Infinity : v};
  });
  rows.sort((a, b) => b.v - a.v);  // stable: ties keep the page's order
  return el('div', {},
    el('h4', {}, title),
    el('ul', {class: 'nb'}, rows.slice(0, NEIGHBOURS).map(x => el('li', {},
      el('span', {class: 'nbv', title: measure}, fmt(x.v === -Infinity ? null : x.v)), ' ',
      x.link ? document.importNode(x.link, true) : '—'))));
}

/** Fill `panel` with the feature (layer, feature); `measure` orders the neighbour lists. */
export async function showFeaturePanel(panel, layer, feature, {measure = 'jaccard', onCommunity = null} = {}) {
  panel.hidden = false;
  panel.replaceChildren(el('p', {class: 'note'}, `loading ${layer}:${feature}…`));
  try {
    const doc = await summary(layer, feature, measure);
    const card = document.importNode(doc.getElementById('feature-card'), true);
    card.querySelectorAll('ol.examples > li').forEach((li, i) => { if (i >= EXAMPLES) li.remove(); });
    const comm = card.querySelector('a.comm[data-community]');
    const c = comm ? Number(comm.dataset.community) : null;
    // communities of one feature have no page in a static export
    const hasPage = c !== null && (!STATIC || (await siteInfo()).communities.includes(c));
    const close = el('button', {class: 'close', type: 'button', title: 'close', onclick: () => { panel.hidden = true; }}, '×');
    const actions = el('p', {class: 'actions'},
      el('a', {href: featureHref(layer, feature), id: 'open-feature', class: 'button'}, 'Open feature page →'),
      hasPage ? el('a', {href: communityHref(c), class: 'button light',
        onclick: onCommunity ? (e) => { e.preventDefault(); onCommunity(c); } : null}, `community ${c}`) : null);
    card.querySelector('.feature-head').after(actions);
    paintSwatches(card);
    panel.replaceChildren(close, card,
      neighbourList('Upstream', doc, 'up', measure),
      neighbourList('Downstream', doc, 'down', measure));
  } catch (err) {
    panel.replaceChildren(el('p', {class: 'error'}, `could not load the feature: ${err.message}`));
  }
}
