// idstream console: draws the charts of a page from its <script type="application/json" id="chart-data">.
// The numbers are also in the page's tables; without this script (or Chart.js) nothing else is lost.
(function () {
  "use strict";
  var holder = document.getElementById("chart-data");
  if (!holder || typeof Chart === "undefined") { return; }
  var data = JSON.parse(holder.textContent);
  var palette = ["#2456c7", "#1f9d8b", "#c46a00", "#b3261e", "#6b4fbb", "#5b6475"];
  Chart.defaults.animation = false;  // screenshots and tests see the final picture at once
  Chart.defaults.font.family = "system-ui, sans-serif";
  function bar(canvas, labels, sets, options) {
    return new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: sets.map(function (s, i) {
        return Object.assign({ backgroundColor: palette[i % palette.length] }, s);
      }) },
      options: Object.assign({ responsive: true, maintainAspectRatio: false,
        plugins: { legend: { position: "bottom" } } }, options || {})
    });
  }
  function short(labels) { return labels.map(function (l) { return l.length > 28 ? l.slice(0, 27) + "…" : l; }); }
  var charts = {
    volume: function (c) {
      bar(c, short(data.labels), [{ label: data.words["col.leads"], data: data.leads },
                                  { label: data.words["col.deals"], data: data.deals }]);
    },
    money: function (c) {
      bar(c, short(data.labels), [{ label: data.words["col.revenue"], data: data.revenue },
                                  { label: data.words["col.cost"], data: data.cost }]);
    },
    efficiency: function (c) {
      bar(c, short(data.labels), [{ label: data.words["col.cpl"], data: data.cpl, yAxisID: "y" },
                                  { label: data.words["col.romi"], data: data.romi, yAxisID: "y1" }],
          { scales: { y: { position: "left" }, y1: { position: "right", grid: { drawOnChartArea: false } } } });
    },
    funnel: function (c) {
      bar(c, data.stages, [{ label: data.words.reached, data: data.reached }], { indexAxis: "y" });
    },
    series: function (c) {
      new Chart(c, { type: "line", data: { labels: data.series_labels, datasets: data.stages.map(function (s, i) {
        return { label: s, data: data.series.map(function (row) { return row[i]; }),
                 borderColor: palette[i % palette.length], backgroundColor: palette[i % palette.length] };
      }) }, options: { responsive: true, maintainAspectRatio: false, plugins: { legend: { position: "bottom" } } } });
    },
    "calls-days": function (c) {
      bar(c, data.days, [{ label: data.words["calls.answered"], data: data.answered, stack: "s" },
                         { label: data.words["calls.missed"], data: data.missed, stack: "s" }],
          { scales: { x: { stacked: true }, y: { stacked: true } } });
    },
    "calls-hours": function (c) {
      bar(c, data.hours, [{ label: data.words["calls.calls"], data: data.hour_calls },
                          { label: data.words["calls.missed"], data: data.hour_missed }]);
    }
  };
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var draw = charts[canvas.getAttribute("data-chart")];
    if (draw) { draw(canvas); canvas.setAttribute("data-drawn", "true"); }
  });
}());
