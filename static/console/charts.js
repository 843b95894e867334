/* Draws the console's charts with Plotly (served locally, see budgets/staticfiles.py).
 *
 * Each chart is a <div data-chart="ID"> next to <script type="application/json" id="ID">
 * (Django's json_script) holding a spec built by budgets/views/charts.py:
 *   {kind: "bar"|"line"|"pie", stack, horizontal, x, xType, yTitle, series: [{name, y, labels}]}
 * Amounts arrive as exact decimal strings plus formatted labels; the tooltips show the labels.
 */
(function () {
  "use strict";

  // One colour per name on the whole page, so a model has the same colour in every chart.
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
  var OTHER = "#c7c7c7";
  var colours = {};
  var used = 0;

  function colourFor(name) {
    if (name === "other users") {
      return OTHER;
    }
    if (!(name in colours)) {
      colours[name] = PALETTE[used % PALETTE.length];
      used += 1;
    }
    return colours[name];
  }

  function traceFor(spec, s) {
    var values = s.y.map(Number);
    if (spec.kind === "pie") {
      return {
        type: "pie", labels: spec.x, values: values, customdata: s.labels, hole: 0.5, sort: false,
        marker: {colors: spec.x.map(colourFor)}, textinfo: "percent", textposition: "inside",
        hovertemplate: "<b>%{label}</b><br>%{customdata} (%{percent})<extra></extra>"
      };
    }
    var single = spec.series.length === 1;
    var trace = {name: s.name, customdata: s.labels};
    if (spec.horizontal) {
      trace.orientation = "h";
      trace.x = values;
      trace.y = spec.x;
      trace.hovertemplate = "<b>%{y}</b>" + (single ? "" : " · %{fullData.name}") + "<br>%{customdata}<extra></extra>";
    } else {
      trace.x = spec.x;
      trace.y = values;
      trace.hovertemplate = "<b>%{fullData.name}</b><br>%{x}<br>%{customdata}<extra></extra>";
    }
    var colour = s.colour || colourFor(s.name);
    if (spec.kind === "line") {
      trace.type = "scatter";
      trace.mode = "lines+markers";
      trace.line = {color: colour, width: 2};
      trace.marker = {color: colour, size: 5};
    } else {
      trace.type = "bar";
      trace.marker = {color: colour};
    }
    return trace;
  }

  // Tick labels come from the server, in the console's one money format (templatetags/console.py).
  function moneyAxis(title, narrow, ticks) {
    var axis = {title: {text: narrow ? "" : (title || "")}, rangemode: "tozero", automargin: true, zeroline: true};
    if (ticks) {
      axis.tickmode = "array";
      axis.tickvals = ticks.vals.map(Number);
      axis.ticktext = ticks.text;
      axis.range = [0, Number(ticks.vals[ticks.vals.length - 1])];
    } else {
      axis.tickprefix = "$";
      axis.tickformat = ".2f";
    }
    return axis;
  }

  function layoutFor(spec, el) {
    var narrow = el.clientWidth < 520;
    var rows = spec.horizontal ? spec.x.length : 0;
    var legendItems = spec.kind === "pie" ? spec.x.length : (spec.series.length > 1 ? spec.series.length : 0);
    // Room for the legend under the plot: two columns on a phone, about five on a wide screen.
    var legendRows = Math.ceil(legendItems / (narrow ? 2 : 5));
    var plotHeight = spec.horizontal ? Math.max(200, 28 * rows + 70) : (narrow ? 240 : 300);
    var layout = {
      height: spec.height || plotHeight + 22 * legendRows,
      margin: {l: 8, r: 12, t: 8, b: 8},
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: {family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12},
      showlegend: spec.kind === "pie" || spec.series.length > 1,
      legend: {orientation: "h", x: 0, xanchor: "left", y: -0.12, yanchor: "top", traceorder: "normal",
               entrywidth: narrow ? 0.5 : 0.2, entrywidthmode: "fraction"},
      hoverlabel: {align: "left"}
    };
    if (spec.kind === "pie") {
      layout.uniformtext = {mode: "hide", minsize: 10};
      layout.legend.y = -0.05;
      return layout;
    }
    layout.barmode = spec.stack ? "stack" : "group";
    if (spec.horizontal) {
      layout.xaxis = moneyAxis(spec.yTitle, narrow, spec.ticks);
      layout.yaxis = {type: "category", autorange: "reversed", automargin: true};
    } else {
      layout.xaxis = {type: spec.xType || "category", automargin: true};
      if (spec.xType === "date") {
        layout.xaxis.hoverformat = "%a %d %b %Y";
        layout.xaxis.tickformat = "%d %b";
      }
      layout.yaxis = moneyAxis(spec.yTitle, narrow, spec.ticks);
    }
    return layout;
  }

  function draw(el) {
    var source = document.getElementById(el.getAttribute("data-chart"));
    if (!source || typeof Plotly === "undefined") {
      return;
    }
    var spec = JSON.parse(source.textContent);
    var traces = spec.series.map(function (s) { return traceFor(spec, s); });
    Plotly.newPlot(el, traces, layoutFor(spec, el), {
      responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"]
    });
  }

  document.querySelectorAll("[data-chart]").forEach(draw);
})();
