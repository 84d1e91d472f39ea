// Overview charts (plotly.js from the installed plotly wheel, served by the app).

import {el} from './common.js';

const data = JSON.parse(document.getElementById('overview-data').textContent);
const CLASS_COLORS = {new: '#2a9d8f', carried: '#577590', ending: '#e76f51', 'new+ending': '#f4a261', dead: '#bbbbbb',
  unstable: '#9d4edd'};
const config = {displaylogo: false, responsive: true};

function lifecycleChart() {
  const target = document.getElementById('lifecycle-chart');
  const layers = data.per_layer.map(r => r.layer);
  const classes = [...new Set(data.per_layer.flatMap(r => Object.keys(r.lifecycle)))];
  if (!classes.length) {
    target.replaceChildren(el('p', {class: 'note'},
      'No lifecycle classes yet (run `saelineage analyze RUN`). Live and dead features per layer:'));
    classes.push('live', 'dead');
    for (const r of data.per_layer) r.lifecycle = {live: r.features - r.dead, dead: r.dead};
    const div = el('div', {class: 'chart'});
    target.append(div);
    return draw(div);
  }
  return draw(target);

  function draw(div) {
    const order = ['new', 'new+ending', 'carried', 'ending', 'live', 'dead'];
    classes.sort((a, b) => (order.indexOf(a) + 99 * (order.indexOf(a) < 0)) - (order.indexOf(b) + 99 * (order.indexOf(b) < 0)));
    const traces = classes.map(c => ({
      type: 'bar', name: c, x: layers, y: data.per_layer.map(r => r.lifecycle[c] || 0),
      marker: {color: CLASS_COLORS[c]},
      hovertemplate: `layer %{x}: %{y} ${c}<extra></extra>`,
    }));
    Plotly.newPlot(div, traces, {
      barmode: 'stack', height: 320, margin: {l: 50, r: 10, t: 10, b: 40},
      xaxis: {title: {text: 'layer'}, tickmode: 'array', tickvals: layers},
      yaxis: {title: {text: 'features'}}, legend: {orientation: 'h', y: 1.12},
    }, config);
  }
}

function histograms() {
  // one figure, one subplot per measure: a single Plotly.newPlot keeps the page quick
  const box = document.getElementById('hist-charts');
  const measures = Object.keys(data.histograms);
  if (!measures.length) {
    box.replaceChildren(el('p', {class: 'note'}, 'No edges yet: run `saelineage stats RUN`.'));
    return;
  }
  const cols = Math.min(3, measures.length), rows = Math.ceil(measures.length / cols);
  const traces = [], layout = {
    height: 210 * rows, margin: {l: 45, r: 10, t: 30, b: 30}, showlegend: false, annotations: [],
    grid: {rows, columns: cols, pattern: 'independent', xgap: 0.12, ygap: 0.35}};
  measures.forEach((m, i) => {
    const bins = data.histograms[m], k = i === 0 ? '' : String(i + 1);
    traces.push({type: 'bar', x: bins.map(b => (b[0] + b[1]) / 2), y: bins.map(b => b[2]),
      width: bins.map(b => b[1] - b[0]), xaxis: `x${k}`, yaxis: `y${k}`, marker: {color: '#577590'},
      hovertemplate: `${m}: %{x:.3g}, %{y} edges<extra></extra>`});
    layout[`yaxis${k}`] = {type: 'log'};
    layout.annotations.push({text: m.replaceAll('_', ' '), xref: `x${k} domain`, yref: `y${k} domain`,
      x: 0.5, y: 1.18, showarrow: false, font: {size: 13}});
  });
  const div = el('div', {class: 'hist'});
  box.append(div);
  Plotly.newPlot(div, traces, layout, {...config, displayModeBar: false});
}

function ratesChart() {
  const div = document.getElementById('rates-chart');
  if (!div || !data.rates.length) return;
  const x = data.rates.map(r => r.layer);
  const pct = v => (v === null || v === undefined ? null : 100 * v);
  // 95% bootstrap intervals over windows (lifecycle.parquet share_*_lo/_hi), when analyze computed them
  const bars = key => (data.rates.some(r => r[`${key}_lo`] != null) ? {
    error_y: {type: 'data', symmetric: false, thickness: 1.5, width: 4,
      array: data.rates.map(r => (r[`${key}_hi`] == null || r[key] == null ? null : pct(r[`${key}_hi`] - r[key]))),
      arrayminus: data.rates.map(r => (r[`${key}_lo`] == null || r[key] == null ? null : pct(r[key] - r[`${key}_lo`])))},
  } : {});
  const line = (key, name, color, dash) => ({
    type: 'scatter', mode: 'lines+markers', name, x, y: data.rates.map(r => pct(r[key])),
    line: {color, dash}, hovertemplate: `layer %{x}: %{y:.1f}% ${name}<extra></extra>`,
    ...(dash === 'solid' ? bars(key) : {})});
  const traces = [line('share_new', 'new', CLASS_COLORS.new, 'solid'),
                  line('share_ending', 'ending', CLASS_COLORS.ending, 'solid')];
  if (data.rates.some(r => r.seed_ceiling != null)) {
    // the seed ceiling: the most pass-through SAEs this reproducible can show; continuing ÷ ceiling beside it
    traces.push({type: 'scatter', mode: 'markers', name: 'seed ceiling', x, y: data.rates.map(r => pct(r.seed_ceiling)),
      marker: {symbol: 'diamond', size: 10, color: CLASS_COLORS.unstable},
      hovertemplate: 'layer %{x}: a second SAE training reproduces %{y:.1f}% of the features<extra></extra>'},
    line('share_continuing_normalised', 'continuing ÷ ceiling', CLASS_COLORS.carried, 'dot'));
  }
  if ('ref_share_new' in data.rates[0]) {
    traces.push(line('ref_share_new', 'new (dead counted)', CLASS_COLORS.new, 'dash'),
                line('ref_share_ending', 'ending (dead counted)', CLASS_COLORS.ending, 'dash'));
  }
  Plotly.newPlot(div, traces, {height: 280, margin: {l: 50, r: 10, t: 10, b: 40},
    xaxis: {title: {text: 'layer'}, tickmode: 'array', tickvals: x}, yaxis: {title: {text: '% of live features'}},
    legend: {orientation: 'h', y: 1.15}}, config);
}

lifecycleChart();
ratesChart();
histograms();
document.body.dataset.ready = '1';
