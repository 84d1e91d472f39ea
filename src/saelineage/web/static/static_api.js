// The browser's API, answered from the JSON files of a static export (saelineage export-site).
// common.js routes api() here on pages marked data-site="static". Each file holds the server's own
// answers, written through the API's response models, so the browser's scripts run unchanged. The
// files are fetched on demand: the graph's side panel loads the one chunk that holds its feature.

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

/** The stored neighbours (strongest by jaccard) re-ordered by `sort`: a server would pick the strongest by it. */
function neighbours(rows, sort, limit) {
  const v = x => (x[sort] === null || x[sort] === undefined ? -Infinity : x[sort]);
  return [...rows].sort((a, b) => v(b) - v(a)).slice(0, limit);
}

export async function staticApi(path, body) {
  if (body !== undefined) throw new Error('live prompts need the model: this is a static export');
  const u = new URL(path, 'http://static.invalid/');
  const p = u.searchParams;
  const s = await siteInfo();
  const m = u.pathname.match(/^\/api\/features\/(\d+)\/(\d+)(\/neighbours)?$/);
  if (m) {
    const rec = await record(Number(m[1]), Number(m[2]));
    if (m[3]) {
      const sort = p.get('sort') || 'jaccard', limit = Number(p.get('limit') || 50);
      const dirs = p.get('direction') && p.get('direction') !== 'both' ? [p.get('direction')] : ['up', 'down'];
      const out = {sort};
      for (const d of dirs) out[d] = neighbours(rec.neighbours[d] || [], sort, limit);
      return out;
    }
    const f = rec.feature;  // communities of one feature get no page of their own
    return {...f, examples: f.examples.slice(0, Number(p.get('examples') || 20)),
      community_page: s.communities.includes(f.community)};
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
