// interp viewer: draws the figures and attention patterns described by JSON blocks in the page.
// Figures: <script type="application/json" data-plotly="ID">{"fig": {...}, "click": "/url/{y}/{x}"}</script>
// CircuitsVis: <script type="application/json" data-circuitsvis="ID">{"component": "...", "props": {...}}</script>
(function () {
  "use strict";

  function showError(el, message) {
    var p = document.createElement("p");
    p.className = "fig-error";
    p.textContent = message;
    el.appendChild(p);
  }

  function linkFor(spec, point) {
    if (typeof point.customdata === "string" && point.customdata.charAt(0) === "/") return point.customdata;
    if (spec.click && point.x !== undefined && point.y !== undefined) {
      return spec.click.replace("{x}", encodeURIComponent(point.x)).replace("{y}", encodeURIComponent(point.y));
    }
    return null;
  }

  function drawFigures() {
    var blocks = document.querySelectorAll('script[type="application/json"][data-plotly]');
    blocks.forEach(function (block) {
      var el = document.getElementById(block.getAttribute("data-plotly"));
      if (!el) return;
      if (typeof Plotly === "undefined") { showError(el, "plotly.js did not load"); return; }
      var spec = JSON.parse(block.textContent);
      var fig = spec.fig || {};
      var config = Object.assign({displaylogo: false, responsive: true}, fig.config || {});
      Plotly.newPlot(el, fig.data || [], fig.layout || {}, config).then(function (gd) {
        gd.on("plotly_click", function (ev) {
          if (!ev || !ev.points || !ev.points.length) return;
          var url = linkFor(spec, ev.points[0]);
          if (url) window.location.href = url;
        });
        el.setAttribute("data-rendered", "1");
      });
    });
  }

  function drawCircuitsVis() {
    var blocks = document.querySelectorAll('script[type="application/json"][data-circuitsvis]');
    blocks.forEach(function (block) {
      var id = block.getAttribute("data-circuitsvis");
      var el = document.getElementById(id);
      if (!el) return;
      if (typeof CircuitsVis === "undefined") { showError(el, "CircuitsVis did not load"); return; }
      var spec = JSON.parse(block.textContent);
      var component = CircuitsVis[spec.component];
      if (!component) { showError(el, "unknown CircuitsVis component " + spec.component); return; }
      CircuitsVis.render(id, component, spec.props);
      el.setAttribute("data-rendered", "1");
    });
  }

  function start() { drawFigures(); drawCircuitsVis(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
