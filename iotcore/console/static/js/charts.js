// uPlot charts (vendored, loaded as a classic script: window.uPlot). Each chart also keeps its
// numbers in a table under "Show data", for screen readers and for the tests.
import { h, clear, table } from "./dom.js";

const COLOURS = ["#1f6feb", "#8250df", "#bf3989", "#1a7f37"];

export class Chart {
  constructor(title, seriesNames, { id } = {}) {
    this.title = title;
    this.seriesNames = seriesNames;
    this.plot = null;
    this.canvas = h("div", { class: "chart", role: "img", "aria-label": title });
    this.rows = h("div");
    this.element = h(
      "figure",
      { id, class: "chart-figure", dataset: { points: "0" } },
      this.canvas,
      h("details", {}, h("summary", {}, "Show data"), this.rows),
    );
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(this.canvas);
  }

  width() {
    return Math.max(280, this.canvas.clientWidth || 600);
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: 240 });
  }

  // data: [xs (epoch seconds), ...one array per series]
  set(data, { tableLimit = 500 } = {}) {
    const count = data[0].length;
    this.element.dataset.points = String(count);
    if (!this.plot) {
      this.plot = new window.uPlot(
        {
          width: this.width(),
          height: 240,
          scales: { x: { time: true } },
          series: [{}, ...this.seriesNames.map((label, i) => ({ label, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true }))],
          legend: { live: true },
        },
        data,
        this.canvas,
      );
    } else {
      this.plot.setData(data);
    }
    const first = Math.max(0, count - tableLimit);
    const rows = [];
    for (let i = count - 1; i >= first; i -= 1) {
      rows.push(
        h(
          "tr",
          {},
          h("td", {}, new Date(data[0][i] * 1000).toISOString()),
          data.slice(1).map((s) => h("td", {}, s[i] === null || s[i] === undefined ? "" : String(s[i]))),
        ),
      );
    }
    clear(this.rows, table(this.title, ["Time", ...this.seriesNames], rows, { class: "data" }));
  }

  destroy() {
    this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
