"""The viewer's HTML: an index of the store's visualization runs and one plot page per run
(plotly scattergl, served with the app's own copy of plotly.js)."""

from __future__ import annotations

import html
import json
from pathlib import Path

PLOTLY_JS_ROUTE = "/static/plotly.min.js"


def plotly_js_path() -> Path:
    """plotly.js as shipped inside the ``plotly`` Python package (no network needed)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


_STYLE = """
body{font-family:sans-serif;margin:0;display:flex;height:100vh}
#side{width:260px;padding:12px;border-right:1px solid #ddd;overflow:auto;font-size:13px}
#plot{flex:1;min-width:0}
h1{font-size:15px;margin:0 0 8px}
label{display:block;margin-top:10px;font-weight:bold}
select,input,button{font-size:13px;margin-top:4px}
#thumb{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ccc;display:none}
#legend div{display:flex;align-items:center;gap:6px}
#legend span.sw{width:10px;height:10px;border-radius:5px;display:inline-block}
#msg.error{color:#b00}
#msg.ok{color:#070}
"""

_SCRIPT = r"""
const CFG = JSON.parse(document.getElementById('cfg').textContent);
const PALETTE = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2',
  '#7f7f7f','#bcbd22','#17becf','#393b79','#637939','#8c6d31','#843c39','#7b4173'];
const BASE = '#1f77b4';
const gd = document.getElementById('plot');
const V = window.viewer = {ready: false, data: null, colour: null, selected: [],
  lastSave: null, afterplots: 0};
function msg(text, ok) {
  const m = document.getElementById('msg');
  m.textContent = text; m.className = ok ? 'ok' : 'error';
}
async function getJSON(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function setSelected(ev) {
  const seen = new Set();
  for (const p of (ev && ev.points) || []) seen.add(V.data.sample_ids[p.pointIndex]);
  V.selected = [...seen];
  document.getElementById('count').textContent = V.selected.length + ' samples selected';
  document.getElementById('save').disabled = V.selected.length === 0;
}
function fetchColour(field) {
  return getJSON(CFG.colour_url + '?field=' + encodeURIComponent(field));
}
// The marker of a colour field's values (null: one colour), and its legend entries.
// Categories become numeric codes on a stepped colour scale: scattergl draws numbers much
// faster than one colour string per point.
function pointSize() {
  const n = V.data ? V.data.x.length : 0;
  return n < 2000 ? 8 : (n < 20000 ? 5 : 3);
}
function markerFor(c) {
  const size = pointSize();
  if (!c) return {marker: {size: size, color: BASE, showscale: false}, legend: []};
  if (c.kind === 'score') {
    const vals = c.values.map(v => v === null ? NaN : v);
    return {marker: {size: size, color: vals, colorscale: 'Viridis', showscale: true,
      colorbar: {title: {text: c.title, side: 'right'}}}, legend: []};
  }
  const cats = [...new Set(c.values.filter(v => v !== null))].sort();
  const code = new Map(cats.map((k, i) => [k, i]));
  const n = cats.length + 1;  // the last code: no value
  const colours = cats.map((k, i) => PALETTE[i % PALETTE.length]).concat(['#cccccc']);
  const scale = [];
  colours.forEach((col, i) => { scale.push([i / n, col], [(i + 1) / n, col]); });
  const codes = c.values.map(v => v === null ? n - 1 : code.get(v));
  return {marker: {size: size, color: codes, colorscale: scale, cmin: -0.5, cmax: n - 0.5,
    showscale: false}, legend: cats.map((k, i) => [k, colours[i]])};
}
function showLegend(entries) {
  const legend = document.getElementById('legend');
  legend.innerHTML = '';
  for (const [k, col] of entries.slice(0, 50)) {
    const row = document.createElement('div');
    const sw = document.createElement('span');
    sw.className = 'sw'; sw.style.background = col;
    row.append(sw, document.createTextNode(k));
    legend.append(row);
  }
  if (entries.length > 50) {
    legend.append(document.createTextNode('... ' + entries.length + ' in all'));
  }
}
async function colourBy(field) {
  const c = field ? await fetchColour(field) : null;
  const m = markerFor(c);
  V.colour = c;
  await Plotly.restyle(gd, {marker: [m.marker]}, [0]);
  showLegend(m.legend);
}
function hover(ev) {
  const i = ev.points[0].pointIndex;
  const sid = V.data.sample_ids[i];
  const img = document.getElementById('thumb');
  img.src = CFG.thumb_url + encodeURIComponent(sid);
  img.style.display = 'block';
  let text = V.data.ids[i];
  if (V.colour) {
    const v = V.colour.values[i];
    text += '\n' + V.colour.title + ': ' + (typeof v === 'number' ? v.toPrecision(4) : v);
  }
  document.getElementById('hovered').textContent = text;
}
async function saveView() {
  const name = document.getElementById('name').value.trim();
  try {
    const res = await getJSON(CFG.views_url, {method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({name: name, sample_ids: V.selected, source: CFG.brain_key})});
    V.lastSave = res;
    msg('saved view ' + res.name + ' (' + res.n + ' samples)', true);
  } catch (err) {
    V.lastSave = {error: err.message};
    msg(err.message, false);
  }
}
function hasWebGL() {
  try {
    const c = document.createElement('canvas');
    return !!(c.getContext('webgl2') || c.getContext('webgl'));
  } catch (err) { return false; }
}
async function main() {
  // both requests go out while plotly.js (deferred) is still being parsed
  const dataP = getJSON(CFG.data_url);
  const colourP = CFG.default_field ? fetchColour(CFG.default_field) : Promise.resolve(null);
  await new Promise(ok => document.readyState === 'loading' ?
    document.addEventListener('DOMContentLoaded', ok) : ok());
  let colour;
  try {
    [V.data, colour] = await Promise.all([dataP, colourP]);
  } catch (err) { msg(err.message, false); return; }
  const d = V.data;
  V.colour = colour;
  const sel = document.getElementById('field');
  for (const f of d.fields) sel.add(new Option(f.title + ' [' + f.kind + ']', f.id));
  if (CFG.default_field) sel.value = CFG.default_field;
  sel.onchange = () => colourBy(sel.value).catch(err => msg(err.message, false));
  const title = CFG.dataset + '/' + CFG.brain_key + ' (' + d.method + ', ' + d.x.length +
    ' points' + (d.dims > 2 ? ', first 2 of ' + d.dims + ' dims' : '') + ')';
  document.getElementById('title').textContent = title;
  // WebGL draws 100k points; without it (no GPU, no software GL) fall back to SVG
  V.renderer = hasWebGL() ? 'scattergl' : 'scatter';
  if (V.renderer === 'scatter') msg('no WebGL in this browser: drawing with SVG (slow)', false);
  const m = markerFor(colour);
  const trace = {type: V.renderer, mode: 'markers', x: d.x, y: d.y, text: d.ids,
    hovertemplate: '%{text}<extra></extra>', marker: m.marker};
  const layout = {dragmode: 'pan', hovermode: 'closest', margin: {l: 40, r: 10, t: 30, b: 30},
    xaxis: {zeroline: false}, yaxis: {zeroline: false}, showlegend: false};
  const config = {scrollZoom: true, displaylogo: false, responsive: true};
  V.dataAt = performance.now();
  await Plotly.newPlot(gd, [trace], layout, config);  // resolves after 'plotly_afterplot'
  V.plottedAt = performance.now();
  showLegend(m.legend);
  gd.on('plotly_afterplot', () => { V.afterplots += 1; });
  gd.on('plotly_selected', setSelected);
  gd.on('plotly_deselect', () => setSelected(null));
  gd.on('plotly_hover', hover);
  document.getElementById('save').onclick = saveView;
  V.ready = true;
}
main();
"""


def plot_page(dataset: str, brain_key: str, default_field: str | None = None) -> str:
    """The interactive plot of one visualization run (data loaded from the JSON routes),
    first coloured by ``default_field`` (``label:<field>``) if given."""
    cfg = {
        "default_field": default_field,
        "dataset": dataset,
        "brain_key": brain_key,
        "data_url": f"/api/plot/{dataset}/{brain_key}",
        "colour_url": f"/api/colour/{dataset}/{brain_key}",
        "views_url": f"/api/views/{dataset}",
        "thumb_url": f"/thumb/{dataset}/",
    }
    title = html.escape(f"{dataset}/{brain_key}")
    cfg_json = json.dumps(cfg).replace("<", "\\u003c")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style>
<script defer src="{PLOTLY_JS_ROUTE}"></script></head>
<body><div id="side">
<h1 id="title">{title}</h1>
<div><a href="/">all plots</a></div>
<label for="field">Colour by</label>
<select id="field"><option value="">(none)</option></select>
<div id="legend"></div>
<label>Hovered sample</label>
<img id="thumb" alt="thumbnail"><pre id="hovered"></pre>
<label for="name">Save the selection (lasso or box tool)</label>
<div id="count">0 samples selected</div>
<input id="name" placeholder="view name, e.g. odd_cluster">
<button id="save" disabled>save view</button>
<div id="msg"></div>
<p>Scroll to zoom, drag to pan; double-click resets.</p>
</div><div id="plot"></div>
<script id="cfg" type="application/json">{cfg_json}</script>
<script>{_SCRIPT}</script>
</body></html>"""


def index_page(runs: list[tuple[str, str]], views: dict[str, list[tuple[str, int]]]) -> str:
    """Links to every visualization run's plot, and each dataset's saved views."""
    items = "".join(
        f'<li><a href="/plot/{d}/{k}">{html.escape(d)}/{html.escape(k)}</a></li>' for d, k in runs
    )
    saved = "".join(
        f"<li>{html.escape(d)}: "
        + ", ".join(f"{html.escape(name)} ({n})" for name, n in names)
        + "</li>"
        for d, names in views.items()
        if names
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dagster-brain viewer</title></head>
<body style="font-family:sans-serif">
<h1>Embeddings plots</h1><ul>{items or "<li>no visualization runs yet</li>"}</ul>
<h2>Saved views</h2><ul>{saved or "<li>none</li>"}</ul>
</body></html>"""
