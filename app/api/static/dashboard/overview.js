// The overview's live chart: polls /dashboard/overview.json (the rollup's counter of
// deliveries sent, per channel) every 2 s and plots the rate per minute with uPlot.
// The latest rates also go into the #rates table (the chart's text alternative).
(function () {
  "use strict";
  var EVERY = 2000, KEEP = 150; // five minutes of samples
  var el = document.getElementById("chart");
  if (!el || !window.uPlot) return;
  var colours = ["#0b5cad", "#1a7f37", "#b42318", "#8250df", "#bf8700", "#0a7ea4", "#cf222e",
                 "#57606a", "#953800", "#116329", "#4c2889", "#6e7781"];
  var channels = [], times = [], series = {}, last = null, plot = null;

  function width() { return Math.max(280, el.clientWidth || 600); }
  function build() {
    if (plot) plot.destroy();
    var opts = {
      width: width(), height: 240,
      series: [{}].concat(channels.map(function (c, i) {
        return { label: c, stroke: colours[i % colours.length], width: 2 };
      })),
      axes: [{}, { label: "per minute" }],
      scales: { x: { time: true } }
    };
    plot = new uPlot(opts, data(), el);
  }
  function data() {
    return [times].concat(channels.map(function (c) { return series[c]; }));
  }
  function table(rates) {
    var body = document.querySelector("#rates tbody");
    if (!body) return;
    body.innerHTML = "";
    channels.forEach(function (c) {
      var tr = document.createElement("tr");
      var th = document.createElement("th"); th.scope = "row"; th.textContent = c;
      var td = document.createElement("td"); td.textContent = String(Math.round(rates[c] || 0));
      tr.appendChild(th); tr.appendChild(td); body.appendChild(tr);
    });
    if (!channels.length) body.innerHTML = "<tr><td colspan='2'>Nothing sent yet.</td></tr>";
  }
  function sample(s) {
    if (last) {
      var dt = s.at - last.at, rates = {}, grew = false;
      if (dt <= 0) return;
      Object.keys(s.sent).forEach(function (c) {
        if (channels.indexOf(c) < 0) {
          channels.push(c); channels.sort(); series[c] = times.map(function () { return 0; });
          grew = true;
        }
      });
      times.push(s.at);
      channels.forEach(function (c) {
        var r = Math.max(0, ((s.sent[c] || 0) - (last.sent[c] || 0)) * 60 / dt);
        rates[c] = r; series[c].push(r);
      });
      if (times.length > KEEP) { times.shift(); channels.forEach(function (c) { series[c].shift(); }); }
      if (grew || !plot) build(); else plot.setData(data());
      el.dataset.samples = String(times.length);
      el.dataset.latest = JSON.stringify(rates);
      table(rates);
    }
    last = s;
  }
  function poll() {
    fetch("/dashboard/overview.json", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (r.status === 401) { location.href = "/dashboard/sign-in"; } return r.json(); })
      .then(sample)
      .catch(function () {})
      .finally(function () { setTimeout(poll, EVERY); });
  }
  window.addEventListener("resize", function () { if (plot) plot.setSize({ width: width(), height: 240 }); });
  poll();
})();
