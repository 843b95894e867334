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

  var FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  var FONT_SIZE = 12;
  var LEGEND_ROW = 21;  // px per row of a horizontal legend at FONT_SIZE
  var measure = null;

  function textWidth(text) {
    if (measure === null) {
      measure = document.createElement("canvas").getContext("2d");
      measure.font = FONT_SIZE + "px " + FONT;
    }
    return measure.measureText(text).width;
  }

  // The legend sits under the plot in the chart's own bottom margin, in columns as wide as the
  // longest name, so that no two entries overlap; the axis labels and title keep the room above
  // it (Plotly's automatic margins take the larger of the legend's and the axis's need, not both).
  function legendLayout(names, width) {
    var longest = Math.max.apply(null, names.map(textWidth));
    var entry = Math.ceil(longest) + 52;  // symbol (itemwidth 30), gaps and padding
    var columns = Math.max(1, Math.min(names.length, Math.floor((width - 8) / entry)));
    var rows = Math.ceil(names.length / columns);
    return {
      rows: rows,
      height: rows * LEGEND_ROW + 8,
      legend: {orientation: "h", xref: "container", x: 0, xanchor: "left", yref: "container", y: 0,
               yanchor: "bottom", traceorder: "normal", entrywidthmode: "pixels",
               entrywidth: Math.floor((width - 8) / columns) - 40}
    };
  }

  function layoutFor(spec, el) {
    var width = el.clientWidth;
    var narrow = width < 520;
    var rows = spec.horizontal ? spec.x.length : 0;
    var names = spec.kind === "pie" ? spec.x : spec.series.map(function (s) { return s.name; });
    var showLegend = spec.kind === "pie" || spec.series.length > 1;
    var legend = showLegend ? legendLayout(names, width) : {height: 0, legend: {}};
    var plotHeight = spec.horizontal ? Math.max(200, 28 * rows + 70) : (narrow ? 240 : 300);
    // Room under the plot for the axis's tick labels and, when shown, its title.
    var titled = spec.kind !== "pie" && spec.horizontal && !narrow;
    var axisRoom = spec.kind === "pie" ? 0 : (titled ? 56 : 44);
    var layout = {
      height: spec.height || plotHeight + legend.height,
      margin: {l: 8, r: 12, t: 8, b: showLegend ? legend.height + axisRoom : 8},
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: {family: FONT, size: FONT_SIZE},
      showlegend: showLegend,
      legend: legend.legend,
      hoverlabel: {align: "left"}
    };
    if (spec.kind === "pie") {
      layout.uniformtext = {mode: "hide", minsize: 10};
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
    drawn.push({el: el, spec: spec, width: el.clientWidth});
  }

  var drawn = [];
  document.querySelectorAll("[data-chart]").forEach(draw);

  // A new width changes how many legend columns fit: lay the legend and margins out again.
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      drawn.forEach(function (chart) {
        if (chart.el.clientWidth !== chart.width) {
          chart.width = chart.el.clientWidth;
          var layout = layoutFor(chart.spec, chart.el);
          Plotly.relayout(chart.el, {legend: layout.legend, margin: layout.margin, height: layout.height});
        }
      });
    }, 150);
  });
})();
