// The browser's API, answered from the JSON files of a static export (saelineage export-site).
// common.js routes api() here on pages marked data-site="static"; the answers have the shapes of
// the server's answers, so the browser's scripts run unchanged. Data files are fetched on demand:
// a feature page loads the one chunk that holds its feature.

let site = null;
const chunks = new Map();

async function getJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url} is missing from this export (HTTP ${r.status})`);
  return r.json();
}

export async function siteInfo() {
  if (!site) site = getJson('data/site.json');
  return site;
}

async function record(layer, feature) {
  const s = await siteInfo();
  const key = `${layer}/${Math.floor(feature / s.chunk)}`;
  if (!chunks.has(key)) {
    chunks.set(key, fetch(`data/features/${key}.json`).then(r => (r.ok ? r.json() : {features: {}})).then(d => d.features));
  }
  const rec = (await chunks.get(key))[String(feature)];
  if (!rec) throw new Error(`feature ${layer}:${feature} is not in this export (it holds ${s.selection} features)`);
  return rec;
}

function examples(rec, limit) {
  return rec.ex.slice(0, limit).map(([value, window, pos, hit, left, right, texts], rank) => ({
    rank, value, window, pos, truncated_left: !!left, truncated_right: !!right,
    tokens: texts.map((text, k) => ({text, id: null, hit: k === hit}))}));
}

function neighbours(rec, dir, layer, feature, cols, sort, limit) {
  const block = rec[dir];
  const rows = block.other.map(([l, f, label, community], i) => {
    const row = {};
    cols.forEach((c, k) => { row[c] = block.values[i][k]; });
    const ends = dir === 'up' ? {src_layer: l, src: f, dst_layer: layer, dst: feature}
      : {src_layer: layer, src: feature, dst_layer: l, dst: f};
    return {...row, ...ends, other: {layer: l, feature: f, label, community},
      ablation: block.ablation ? block.ablation[i] : null};
  });
  if (cols.includes(sort)) {
    const v = x => (x[sort] === null || x[sort] === undefined ? -Infinity : x[sort]);
    rows.sort((a, b) => v(b) - v(a));
  }
  return rows.slice(0, limit);
}

export async function staticApi(path, body) {
  if (body !== undefined) throw new Error('live prompts need the model: this is a static export');
  const u = new URL(path, 'http://static.invalid/');
  const p = u.searchParams;
  const s = await siteInfo();
  let m = u.pathname.match(/^\/api\/features\/(\d+)\/(\d+)(\/neighbours|\/relations)?$/);
  if (m) {
    const layer = Number(m[1]), feature = Number(m[2]);
    const rec = await record(layer, feature);
    if (m[3] === '/neighbours') {
      const sort = p.get('sort') || 'jaccard', limit = Number(p.get('limit') || 50);
      const dirs = p.get('direction') && p.get('direction') !== 'both' ? [p.get('direction')] : ['up', 'down'];
      const out = {sort};
      for (const d of dirs) out[d] = neighbours(rec, d, layer, feature, s.neighbour_columns, sort, limit);
      return out;
    }
    if (m[3] === '/relations') return {gates: rec.gates || [], gates_total: rec.gates_total || 0, splits: rec.splits || []};
    return {...rec.f, examples: examples(rec, Number(p.get('examples') || 20))};
  }
  if (u.pathname === '/api/graph') {
    if (p.get('community')) {
      const c = Number(p.get('community'));
      if (!s.communities.includes(c)) throw new Error(`community ${c} has no page in this export (only communities of 2 or more features)`);
      return getJson(`data/graph/community-${c}.json`);
    }
    const measure = p.get('measure') || 'jaccard', k = Number(p.get('edges_per_node') || 0);
    if (!s.graph.measures.includes(measure)) throw new Error(`this export has no graph by ${measure}`);
    if (!s.graph.edges_per_node.includes(k)) throw new Error(`this export has graphs with ${s.graph.edges_per_node.join(', ')} edges per node`);
    return getJson(`data/graph/${measure}-${k}.json`);
  }
  throw new Error(`${u.pathname} is not part of a static export`);
}
