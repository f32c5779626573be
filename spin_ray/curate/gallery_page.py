"""The gallery's static page: one self-contained HTML file (inline CSS and plain JavaScript, no fetches).

The page data is embedded as JSON and the cards are built in the browser, so sorting, filtering and
marking need no server. Marked ids download as an ids file (see sample_ids) for
`spin-ray store filter --exclude`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from spin_ray.curate.gallery import GalleryData

PAGE_NAME = "index.html"

_CSS = """
:root { --bg:#f3f4f6; --card:#fff; --ink:#1f2937; --muted:#6b7280; --line:#e5e7eb; --accent:#2563eb;
        --bad:#dc2626; --warn:#d97706; --good:#059669; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
header { background:#111827; color:#f9fafb; padding:12px 20px; display:flex; align-items:baseline; gap:16px; flex-wrap:wrap; }
header h1 { font-size:18px; margin:0; font-weight:600; }
header .sub { color:#9ca3af; font-size:13px; }
.toolbar { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
           padding:8px 20px; display:flex; gap:10px; align-items:center; flex-wrap:wrap; }
.toolbar input[type=search] { width:340px; padding:6px 8px; border:1px solid #d1d5db; border-radius:6px; font:inherit; }
.toolbar select, .toolbar button { padding:6px 10px; border:1px solid #d1d5db; border-radius:6px; background:#fff; font:inherit; cursor:pointer; }
.toolbar button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
.toolbar button:disabled { opacity:.45; cursor:default; }
.toolbar .count { color:var(--muted); margin-left:auto; }
.toolbar label { color:var(--muted); user-select:none; }
.notices { margin:14px 20px 0; padding:10px 14px; background:#fffbeb; border:1px solid #fcd34d; border-radius:8px; }
.notices p { margin:4px 0; }
.legend { margin:10px 20px 0; color:var(--muted); font-size:12px; display:flex; gap:16px; flex-wrap:wrap; }
.dot { display:inline-block; width:9px; height:9px; border-radius:50%; margin-right:4px; vertical-align:middle; }
main { padding:14px 20px 40px; display:grid; grid-template-columns:repeat(auto-fill, minmax(var(--card-w), 1fr)); gap:14px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; overflow:hidden; box-shadow:0 1px 2px rgba(0,0,0,.05); }
.card.marked { outline:3px solid var(--bad); outline-offset:-1px; }
.card.hidden { display:none; }
.card .head { display:flex; align-items:center; gap:8px; padding:8px 10px; border-bottom:1px solid var(--line); }
.card .id { font-weight:600; font-family:ui-monospace, SFMono-Regular, Menlo, monospace; }
.card .err { margin-left:auto; padding:2px 8px; border-radius:999px; color:#fff; font-weight:600; font-variant-numeric:tabular-nums; }
.err.good { background:var(--good); } .err.warn { background:var(--warn); } .err.bad { background:var(--bad); }
.card .mark { display:flex; align-items:center; gap:4px; color:var(--muted); cursor:pointer; user-select:none; }
.views { display:flex; gap:2px; background:#111827; }
figure { margin:0; position:relative; flex:1 1 0; min-width:0; aspect-ratio:1/1; }
figure img { width:100%; height:100%; display:block; image-rendering:auto; }
figure svg { position:absolute; inset:0; width:100%; height:100%; pointer-events:none; }
figure figcaption { position:absolute; left:4px; top:4px; background:rgba(17,24,39,.7); color:#f9fafb; font-size:11px; padding:1px 6px; border-radius:4px; }
.placeholder { width:100%; height:100%; display:flex; align-items:center; justify-content:center; text-align:center;
               padding:12px; color:#fca5a5; background:#374151; font-size:12px; word-break:break-all; }
body.no-kp figure svg { display:none; }
.card .meta { padding:6px 10px 8px; color:var(--muted); font-size:12px; }
.card .meta b { color:var(--ink); font-weight:600; }
.card .img { font-family:ui-monospace, SFMono-Regular, Menlo, monospace; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.card .problems { margin:0 10px 8px; padding:6px 8px; background:#fef2f2; border:1px solid #fecaca; border-radius:6px; color:#991b1b; font-size:12px; }
figure.zoomable { cursor:zoom-in; }
#lightbox { position:fixed; inset:0; z-index:20; background:rgba(17,24,39,.85); display:none; align-items:center; justify-content:center; cursor:zoom-out; }
#lightbox.open { display:flex; }
#lightbox figure { flex:none; width:min(90vh, 90vw); }
#lightbox .caption { position:absolute; bottom:16px; color:#f9fafb; font-size:14px; }
.empty { grid-column:1/-1; text-align:center; color:var(--muted); padding:60px 0; font-size:16px; }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gallery-data").textContent);
  var grid = document.getElementById("cards");
  var storeKey = "spin-ray-gallery:" + data.namespace;
  var marked = {};
  try { marked = JSON.parse(localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { marked = {}; }
  var SVGNS = "http://www.w3.org/2000/svg";
  var views = data.cards.some(function (c) { return c.prediction; }) ? 3 : 2;
  document.documentElement.style.setProperty("--card-w", (views * 190 + 4) + "px");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function keyOf(c) { return c.dataset + ":" + c.index; }
  function errClass(err) { return err > data.threshold ? "bad" : (err > data.threshold / 2 ? "warn" : "good"); }

  function keypointLayer(card, withFit) {
    var svg = document.createElementNS(SVGNS, "svg");
    svg.setAttribute("viewBox", "0 0 " + data.crop_size + " " + data.crop_size);
    card.keypoints.forEach(function (k, j) {
      if (!(k[2] > 0)) return;
      if (withFit && card.fit_keypoints[j]) {
        var f = card.fit_keypoints[j], line = document.createElementNS(SVGNS, "line");
        line.setAttribute("x1", k[0]); line.setAttribute("y1", k[1]);
        line.setAttribute("x2", f[0]); line.setAttribute("y2", f[1]);
        line.setAttribute("stroke", "#ef4444"); line.setAttribute("stroke-width", "1.2");
        svg.appendChild(line);
      }
      var dot = document.createElementNS(SVGNS, "circle");
      dot.setAttribute("cx", k[0]); dot.setAttribute("cy", k[1]); dot.setAttribute("r", "2.4");
      dot.setAttribute("fill", j < 25 ? "#22c55e" : "#facc15");
      dot.setAttribute("stroke", "#111827"); dot.setAttribute("stroke-width", "0.6");
      svg.appendChild(dot);
    });
    return svg;
  }

  var lightbox = document.getElementById("lightbox");
  lightbox.addEventListener("click", function () { lightbox.classList.remove("open"); lightbox.textContent = ""; });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") lightbox.click(); });
  function zoom(fig, card, caption) {
    lightbox.textContent = "";
    lightbox.appendChild(fig.cloneNode(true));
    lightbox.appendChild(el("div", "caption", caption + " \u00b7 " + keyOf(card) + " \u00b7 error " + card.error.toFixed(1) + "  (click or Esc to close)"));
    lightbox.classList.add("open");
  }

  function view(card, src, caption, withKp, withFit, missing) {
    var fig = el("figure");
    if (src) {
      fig.className = "zoomable";
      fig.title = "click to enlarge";
      fig.addEventListener("click", function () { zoom(fig, card, caption); });
      var img = el("img", "thumb");
      img.src = src; img.alt = caption + " " + keyOf(card); img.loading = "eager";
      fig.appendChild(img);
      if (withKp && card.keypoints.length) fig.appendChild(keypointLayer(card, withFit));
    } else {
      fig.appendChild(el("div", "placeholder", missing));
    }
    fig.appendChild(el("figcaption", "", caption));
    return fig;
  }

  function buildCard(c) {
    var node = el("article", "card");
    node.dataset.key = keyOf(c);
    node.dataset.error = String(c.error);
    node.dataset.search = [c.dataset, c.index, c.source, c.imgname, "step " + c.step].join(" ").toLowerCase();
    var head = el("div", "head");
    var mark = el("label", "mark");
    var box = el("input"); box.type = "checkbox"; box.className = "pick";
    box.checked = !!marked[keyOf(c)];
    mark.appendChild(box); mark.appendChild(document.createTextNode("mark"));
    head.appendChild(mark);
    head.appendChild(el("span", "id", c.dataset + " #" + c.index));
    var err = el("span", "err " + errClass(c.error), c.error.toFixed(1));
    err.title = "ranking error (robust reprojection, px in the " + data.crop_size + " px crop); threshold " + data.threshold;
    head.appendChild(err);
    node.appendChild(head);
    var row = el("div", "views");
    var why = c.problems.length ? "no image: see below" : "no image";
    row.appendChild(view(c, c.crop, "image", true, false, why));
    row.appendChild(view(c, c.overlay, "fit", true, true, "no fit render (no keypoints)"));
    if (views === 3) row.appendChild(view(c, c.prediction, "network", false, false, "no prediction"));
    node.appendChild(row);
    var meta = el("div", "meta");
    var line = el("div");
    [["source", c.source], ["step", c.step], ["updates", c.updates]].forEach(function (p, i) {
      if (i) line.appendChild(document.createTextNode(" \u00b7 "));
      line.appendChild(document.createTextNode(p[0] + " ")); line.appendChild(el("b", "", String(p[1])));
    });
    meta.appendChild(line);
    if (c.imgname) { var im = el("div", "img", c.imgname); im.title = c.imgname; meta.appendChild(im); }
    node.appendChild(meta);
    if (c.problems.length) {
      var probs = el("div", "problems");
      c.problems.forEach(function (p) { probs.appendChild(el("div", "", p)); });
      node.appendChild(probs);
    }
    box.addEventListener("change", function () {
      if (box.checked) marked[keyOf(c)] = [c.dataset, c.index]; else delete marked[keyOf(c)];
      node.classList.toggle("marked", box.checked);
      saveMarks();
    });
    node.classList.toggle("marked", box.checked);
    return node;
  }

  var nodes = data.cards.map(buildCard);
  nodes.forEach(function (n) { grid.appendChild(n); });
  if (!nodes.length) grid.appendChild(el("div", "empty", "No cards to show" + (data.notices.length ? ": see the notes above." : ".")));

  var sorters = {
    "error-desc": function (a, b) { return b.c.error - a.c.error; },
    "error-asc": function (a, b) { return a.c.error - b.c.error; },
    "id": function (a, b) { return a.c.dataset < b.c.dataset ? -1 : a.c.dataset > b.c.dataset ? 1 : a.c.index - b.c.index; },
    "step-desc": function (a, b) { return b.c.step - a.c.step; }
  };
  function applySort() {
    var how = sorters[document.getElementById("sort").value];
    nodes.map(function (n, i) { return { n: n, c: data.cards[i], i: i }; })
      .sort(function (a, b) { return how(a, b) || a.i - b.i; })
      .forEach(function (p) { grid.appendChild(p.n); });
  }

  var NUMERIC = /^(error|step|index|updates)(<=|>=|<|>|=)(-?[0-9.]+)$/;
  function matches(card, node, tokens) {
    return tokens.every(function (t) {
      var m = NUMERIC.exec(t);
      if (m) {
        var v = card[m[1]], x = parseFloat(m[3]);
        return m[2] === "<" ? v < x : m[2] === ">" ? v > x : m[2] === "<=" ? v <= x : m[2] === ">=" ? v >= x : v === x;
      }
      var kv = /^(dataset|source|img):(.*)$/.exec(t);
      if (kv) return String(kv[1] === "img" ? card.imgname : card[kv[1]]).toLowerCase().indexOf(kv[2]) >= 0;
      return node.dataset.search.indexOf(t) >= 0;
    });
  }
  function applyFilter() {
    var tokens = document.getElementById("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    nodes.forEach(function (n, i) {
      var ok = matches(data.cards[i], n, tokens);
      n.classList.toggle("hidden", !ok);
      if (ok) shown++;
    });
    document.getElementById("count").textContent = "showing " + shown + " of " + nodes.length;
  }

  function markedIds() { return Object.keys(marked).map(function (k) { return marked[k]; }); }
  function saveMarks() {
    try { localStorage.setItem(storeKey, JSON.stringify(marked)); } catch (e) { /* file:// may forbid storage */ }
    var n = markedIds().length;
    document.getElementById("marked").textContent = n + " marked";
    document.getElementById("download").disabled = n === 0;
  }
  function setVisibleMarks(on) {
    nodes.forEach(function (n, i) {
      if (n.classList.contains("hidden") && on) return;
      var c = data.cards[i], box = n.querySelector(".pick");
      box.checked = on; n.classList.toggle("marked", on);
      if (on) marked[keyOf(c)] = [c.dataset, c.index]; else delete marked[keyOf(c)];
    });
    saveMarks();
  }
  function idsCsv() {
    var rows = markedIds().sort(function (a, b) { return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]; });
    return "dataset,index\n" + rows.map(function (r) { return r[0] + "," + r[1]; }).join("\n") + (rows.length ? "\n" : "");
  }
  function download() {
    var blob = new Blob([idsCsv()], { type: "text/csv" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "exclude_ids_" + data.namespace + ".csv";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 1000);
  }

  document.getElementById("sort").addEventListener("change", applySort);
  document.getElementById("filter").addEventListener("input", applyFilter);
  document.getElementById("kp").addEventListener("change", function (e) { document.body.classList.toggle("no-kp", !e.target.checked); });
  document.getElementById("mark-visible").addEventListener("click", function () { setVisibleMarks(true); });
  document.getElementById("clear").addEventListener("click", function () { setVisibleMarks(false); });
  document.getElementById("download").addEventListener("click", download);
  window.spinRayGallery = { idsCsv: idsCsv, applySort: applySort, applyFilter: applyFilter };
  applySort(); applyFilter(); saveMarks();
})();
"""


def render_page(data: GalleryData) -> str:
    """The gallery page as one HTML string; the data is embedded as JSON."""
    payload = json.dumps(data.to_json_dict(), allow_nan=False, separators=(",", ":"))
    # "</script" or "<!--" inside a script element would change how HTML parses it: write every
    # '<', '>' and '&' as a JSON unicode escape, which JSON.parse reads back as the same text.
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    esc = html.escape
    notices = "".join(f"<p>{esc(n)}</p>" for n in data.notices)
    notices_block = f'<section class="notices" id="notices">{notices}</section>' if data.notices else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fit gallery · {esc(data.namespace)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
  <h1>spin-ray fit gallery</h1>
  <span class="sub">namespace <b>{esc(data.namespace)}</b> · {esc(data.selection)} · {len(data.cards)} samples ·
  valid-fit threshold {data.threshold:g} · made {esc(data.created)}</span>
</header>
<div class="toolbar">
  <input type="search" id="filter" placeholder="filter: text, source:loop, error&gt;50, step&lt;1000 …" aria-label="filter">
  <select id="sort" aria-label="sort">
    <option value="error-desc">error, worst first</option>
    <option value="error-asc">error, best first</option>
    <option value="id">dataset, index</option>
    <option value="step-desc">step, latest first</option>
  </select>
  <label><input type="checkbox" id="kp" checked> keypoints</label>
  <button id="mark-visible" title="mark every card the filter shows">mark shown</button>
  <button id="clear" title="unmark every card">clear marks</button>
  <button id="download" class="primary" title="CSV dataset,index for: spin-ray store filter --exclude FILE">download marked ids</button>
  <span id="marked"></span>
  <span class="count" id="count"></span>
</div>
{notices_block}
<div class="legend">
  <span><i class="dot" style="background:#22c55e"></i>detected keypoints (OpenPose)</span>
  <span><i class="dot" style="background:#facc15"></i>annotated keypoints</span>
  <span><i class="dot" style="background:#ef4444;border-radius:0;height:2px"></i>residual to the fit's keypoint</span>
  <span>marked ids download as CSV for <code>spin-ray store filter --exclude FILE</code></span>
</div>
<main id="cards"></main>
<div id="lightbox" role="dialog" aria-label="enlarged view"></div>
<script type="application/json" id="gallery-data">{payload}</script>
<script>{_JS}</script>
</body>
</html>
"""


def write_page(data: GalleryData, out_dir: str | Path) -> Path:
    """Write the page into out_dir (beside its images/ folder); the path of the page."""
    path = Path(out_dir) / PAGE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(data), encoding="utf-8")
    return path
