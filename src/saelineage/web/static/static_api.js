// The browser's API, answered from the JSON files of a static export (saelineage export-site).
// common.js routes api() here on pages marked data-site="static". Each file holds the server's own
// answer, written through the API's response model, so the browser's scripts run unchanged. Only
// the graphs are data files: a feature's side panel reads the feature's page (panel.js).

let site = null;

async function getJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url} is missing from this export (HTTP ${r.status})`);
  return r.json();
}

/** data/site.json: what the export holds (selection, communities with a page, graph variants). */
export async function siteInfo() {
  if (!site) site = getJson('data/site.json');
  return site;
}

export async function staticApi(path, body) {
  if (body !== undefined) throw new Error('live prompts need the model: this is a static export');
  const u = new URL(path, 'http://static.invalid/');
  const p = u.searchParams;
  const s = await siteInfo();
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
