// One device: details, admin actions, latest values, live chart, history, raw table and CSV,
// commands (when the server has them).
import { all, api, atLeast } from "../api.js";
import { Chart } from "../charts.js";
import { h, clear, confirmDialog, field, flash, formatTime, table } from "../dom.js";
import { LiveFeed } from "../live.js";
import { presence } from "./devices.js";

// Each window with a bucket that gives 60 to 365 points.
export const RANGES = [
  { key: "1h", label: "1 hour", ms: 3600e3, bucket: "1m" },
  { key: "24h", label: "24 hours", ms: 86400e3, bucket: "15m" },
  { key: "7d", label: "7 days", ms: 7 * 86400e3, bucket: "1h" },
  { key: "30d", label: "30 days", ms: 30 * 86400e3, bucket: "PT6H" },
  { key: "1y", label: "1 year", ms: 365 * 86400e3, bucket: "1d" },
];
const LIVE_POINTS = 300;
const TERMINAL = new Set(["succeeded", "failed", "expired"]);

const seconds = (iso) => new Date(iso).getTime() / 1000;

function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

export function devicePage(deviceId) {
  const path = `/devices/${deviceId}`;
  const admin = atLeast("admin");
  let device = null;
  let metrics = [];

  const heading = h("h1", {}, "Device");
  const details = h("dl", { class: "details", id: "device-details" });
  const manage = h("section", { "aria-labelledby": "manage-h", hidden: !admin }, h("h2", { id: "manage-h" }, "Manage"));
  const latestBox = h("div", { id: "latest" });
  const liveState = h("span", { id: "live-state", class: "badge" }, "offline");
  const liveMetric = h("select", { id: "live-metric", name: "live_metric" });
  const liveChart = new Chart("Live values", ["value"], { id: "live-chart" });
  const aggMetric = h("select", { id: "agg-metric", name: "agg_metric" });
  const aggChart = new Chart("History", ["avg", "min", "max"], { id: "agg-chart" });
  const rangeButtons = RANGES.map((r) => h("button", { type: "button", class: "secondary", dataset: { range: r.key }, "aria-pressed": "false" }, r.label));
  const aggInfo = h("p", { class: "muted", id: "agg-info" });
  const commands = h("section", { id: "commands", "aria-labelledby": "commands-h", hidden: true });

  const latest = new Map(); // metric -> {ts, value}
  const live = { xs: [], ys: [] };
  let range = RANGES[0];

  // ------------------------------------------------------------------ details and actions
  function drawDetails() {
    heading.textContent = device.name || device.serial_number;
    const labels = Object.entries(device.labels);
    const rows = [
      ["Serial", device.serial_number],
      ["Model", device.model],
      ["Status", h("span", { class: `badge ${device.status}` }, device.status)],
      ["Presence", presence(device)],
      ["Last seen", formatTime(device.last_seen_at)],
      ["Claimed", formatTime(device.claimed_at)],
      ["Labels", labels.length ? h("ul", { class: "labels" }, labels.map(([k, v]) => h("li", {}, h("code", {}, k), " = ", v))) : "none"],
    ];
    clear(details, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function drawManage() {
    if (!admin) return;
    const name = h("input", { name: "name", value: device.name || "", maxlength: "200" });
    const labels = h("textarea", { name: "labels", rows: "3" });
    labels.value = Object.entries(device.labels).map(([k, v]) => `${k}=${v}`).join("\n");
    const rename = h("form", { class: "inline", id: "rename-form" }, field("Name", name), h("button", { type: "submit" }, "Rename"));
    const labelForm = h("form", { id: "labels-form" }, field("Labels", labels, "One key=value per line."), h("button", { type: "submit" }, "Save labels"));
    const rotate = h("button", { type: "button", class: "secondary", id: "rotate" }, "Rotate secret");
    const reset = h("button", { type: "button", class: "danger", id: "reset" }, "Reset device");
    rename.addEventListener("submit", async (event) => {
      event.preventDefault();
      await patch({ name: name.value.trim() || null }, "Renamed.");
    });
    labelForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const parsed = {};
      for (const line of labels.value.split("\n")) {
        if (!line.trim()) continue;
        const at = line.indexOf("=");
        if (at < 1) {
          flash(`Not key=value: ${line}`, "error");
          return;
        }
        parsed[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      }
      await patch({ labels: parsed }, "Labels saved.");
    });
    rotate.addEventListener("click", async () => {
      const ok = await confirmDialog("Rotate secret", "The device must fetch its new secret; the old one works until then or until the grace period ends.", { action: "Rotate" });
      if (!ok) return;
      await act(() => api("POST", `${path}/secret/rotate`), "Secret rotation started: the device fetches its new secret.");
    });
    reset.addEventListener("click", async () => {
      const ok = await confirmDialog("Reset device", "The device becomes unclaimed and its secrets are revoked. Stored telemetry stays with you.", { typed: "RESET", action: "Reset" });
      if (!ok) return;
      try {
        await api("POST", `${path}/reset`, { body: { confirmation: "RESET" } });
      } catch (error) {
        flash(error.message, "error");
        return;
      }
      // The device is no longer this tenant's: back to the list.
      flash(`${device.name || device.serial_number} was reset; it can be claimed again.`, "info", { keep: true });
      window.location.hash = "#/devices";
    });
    clear(manage, h("h2", { id: "manage-h" }, "Manage"), rename, labelForm, h("p", { class: "actions" }, rotate, reset));
  }

  async function patch(body, message) {
    try {
      device = await api("PATCH", path, { body });
      drawDetails();
      drawManage();
      flash(message);
    } catch (error) {
      flash(`${error.message} ${error.details.map((d) => d.problem).join("; ")}`, "error");
    }
  }

  async function act(call, message) {
    try {
      await call();
      device = await api("GET", path);
      drawDetails();
      flash(message);
    } catch (error) {
      flash(error.message, "error");
    }
  }

  // ------------------------------------------------------------------ latest and live
  function drawLatest() {
    const rows = [...latest.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([metric, v]) => h("tr", {}, h("th", { scope: "row" }, metric), h("td", {}, String(v.value)), h("td", {}, formatTime(v.ts))));
    clear(latestBox, rows.length ? table("Latest values", ["Metric", "Value", "Time"], rows) : h("p", { class: "empty" }, "No telemetry yet."));
  }

  function setMetrics(names) {
    for (const select of [liveMetric, aggMetric]) {
      const chosen = select.value;
      clear(select, names.map((m) => h("option", { value: m }, m)));
      if (names.includes(chosen)) select.value = chosen;
    }
  }

  function addMetric(name) {
    if (metrics.includes(name)) return;
    metrics = [...metrics, name].sort();
    setMetrics(metrics);
  }

  function drawLive() {
    liveChart.set([live.xs, live.ys]);
  }

  function onTelemetry(point) {
    if (point.device_id !== deviceId) return;
    for (const [metric, value] of Object.entries(point.metrics)) {
      const numeric = typeof value === "boolean" ? Number(value) : value;
      latest.set(metric, { ts: point.ts, value: numeric });
      addMetric(metric);
      if (!liveMetric.value) liveMetric.value = metric;
      if (metric === liveMetric.value) {
        live.xs.push(seconds(point.ts));
        live.ys.push(numeric);
        if (live.xs.length > LIVE_POINTS) {
          live.xs.shift();
          live.ys.shift();
        }
      }
    }
    drawLatest();
    drawLive();
    if (device && (!device.last_seen_at || device.last_seen_at < point.ts)) {
      device.last_seen_at = point.ts;
      drawDetails();
    }
  }

  async function seedLive() {
    live.xs = [];
    live.ys = [];
    if (liveMetric.value) {
      const page = await api("GET", `${path}/telemetry`, {
        query: { metric: liveMetric.value, order: "desc", limit: 60, from: new Date(Date.now() - 3600e3).toISOString() },
      });
      for (const item of page.items.reverse()) {
        live.xs.push(seconds(item.ts));
        live.ys.push(item.value);
      }
    }
    drawLive();
  }

  const feed = new LiveFeed(deviceId, {
    telemetry: onTelemetry,
    command: (event) => commandsView.update(event),
    presence: (event) => {
      if (event.device_id !== deviceId || !device) return;
      Object.assign(device, event);
      drawDetails();
    },
    state: (state) => {
      liveState.textContent = state;
      liveState.className = `badge ${state}`;
    },
  });
  // Tests (and curious users in the devtools) can simulate a dropped connection.
  window.iotcoreLiveFeed = feed;

  // ------------------------------------------------------------------ history
  async function loadAggregate() {
    for (const b of rangeButtons) b.setAttribute("aria-pressed", String(b.dataset.range === range.key));
    if (!aggMetric.value) {
      aggChart.set([[], [], [], []]);
      aggInfo.textContent = "No metric yet.";
      return;
    }
    const to = new Date();
    const from = new Date(to.getTime() - range.ms);
    try {
      const answer = await api("GET", `${path}/telemetry/aggregate`, {
        query: { metric: aggMetric.value, from: from.toISOString(), to: to.toISOString(), bucket: range.bucket, fn: "avg,min,max" },
      });
      const items = answer.items;
      aggChart.set([items.map((b) => seconds(b.ts)), items.map((b) => b.avg), items.map((b) => b.min), items.map((b) => b.max)]);
      aggChart.element.dataset.bucket = range.bucket;
      aggInfo.textContent = `${aggMetric.value}: ${items.length} buckets of ${range.bucket} over the last ${range.label}.`;
    } catch (error) {
      flash(error.message, "error");
    }
  }
  rangeButtons.forEach((button, i) =>
    button.addEventListener("click", () => {
      range = RANGES[i];
      loadAggregate();
    }),
  );
  aggMetric.addEventListener("change", loadAggregate);
  liveMetric.addEventListener("change", seedLive);

  // ------------------------------------------------------------------ raw table and CSV
  const now = new Date();
  const rawFrom = h("input", { type: "datetime-local", id: "raw-from", name: "from", step: "1", value: localInput(new Date(now.getTime() - 86400e3)) });
  const rawTo = h("input", { type: "datetime-local", id: "raw-to", name: "to", step: "1", value: localInput(new Date(now.getTime() + 60e3)) });
  const rawMetric = h("input", { id: "raw-metric", name: "metric", placeholder: "all metrics" });
  const rawBox = h("div", { id: "raw" });
  const rawPrev = h("button", { type: "button", class: "secondary", disabled: true }, "Newer");
  const rawNext = h("button", { type: "button", class: "secondary", disabled: true }, "Older");
  const csvButton = h("button", { type: "button", id: "export-csv" }, "Export CSV");
  const rawCursors = [null];
  let rawPage = 0;

  function rawQuery() {
    return {
      from: new Date(rawFrom.value).toISOString(),
      to: new Date(rawTo.value).toISOString(),
      metric: rawMetric.value.trim() || undefined,
    };
  }

  async function loadRaw() {
    try {
      const page = await api("GET", `${path}/telemetry`, { query: { ...rawQuery(), order: "desc", limit: 50, cursor: rawCursors[rawPage] } });
      rawCursors[rawPage + 1] = page.next_cursor;
      rawPrev.disabled = rawPage === 0;
      rawNext.disabled = !page.next_cursor;
      const rows = page.items.map((r) => h("tr", {}, h("td", {}, r.metric), h("td", {}, r.ts), h("td", {}, String(r.value))));
      clear(rawBox, rows.length ? table(`Readings, page ${rawPage + 1}`, ["Metric", "Time (UTC)", "Value"], rows, { id: "raw-table" }) : h("p", { class: "empty" }, "No readings in this range."));
    } catch (error) {
      flash(`${error.message} ${error.details.map((d) => d.problem).join("; ")}`, "error");
    }
  }

  const rawForm = h(
    "form",
    { class: "filters", id: "raw-form" },
    field("From", rawFrom),
    field("To", rawTo),
    field("Metric", rawMetric),
    h("p", { class: "actions" }, h("button", { type: "submit" }, "Show"), csvButton),
  );
  rawForm.addEventListener("submit", (event) => {
    event.preventDefault();
    rawCursors.length = 1;
    rawPage = 0;
    loadRaw();
  });
  rawPrev.addEventListener("click", () => {
    rawPage = Math.max(0, rawPage - 1);
    loadRaw();
  });
  rawNext.addEventListener("click", () => {
    rawPage += 1;
    loadRaw();
  });
  csvButton.addEventListener("click", async () => {
    csvButton.disabled = true;
    try {
      const rows = await all(`${path}/telemetry`, { ...rawQuery(), order: "asc" });
      const quote = (s) => `"${String(s).replaceAll('"', '""')}"`;
      const lines = ["metric,ts,value", ...rows.map((r) => `${quote(r.metric)},${r.ts},${r.value}`)];
      const blob = new Blob([`${lines.join("\r\n")}\r\n`], { type: "text/csv" });
      const link = h("a", { href: URL.createObjectURL(blob), download: `${device.serial_number}-telemetry.csv` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      flash(`Exported ${rows.length} readings.`);
    } catch (error) {
      flash(error.message, "error");
    } finally {
      csvButton.disabled = false;
    }
  });

  // ------------------------------------------------------------------ commands
  const commandsView = commandsSection(commands, path, admin);

  // ------------------------------------------------------------------ page
  const element = h(
    "article",
    {},
    h("p", {}, h("a", { href: "#/devices" }, "← Devices")),
    heading,
    details,
    h("section", { "aria-labelledby": "latest-h" }, h("h2", { id: "latest-h" }, "Latest values"), latestBox),
    h(
      "section",
      { "aria-labelledby": "live-h" },
      h("h2", { id: "live-h" }, "Live ", liveState),
      h("div", { class: "filters" }, field("Metric", liveMetric)),
      liveChart.element,
    ),
    h(
      "section",
      { "aria-labelledby": "history-h" },
      h("h2", { id: "history-h" }, "History"),
      h("div", { class: "filters" }, field("Metric", aggMetric), h("div", { class: "ranges", role: "group", "aria-label": "Time range" }, rangeButtons)),
      aggInfo,
      aggChart.element,
    ),
    h("section", { "aria-labelledby": "raw-h" }, h("h2", { id: "raw-h" }, "Raw readings"), rawForm, rawBox, h("p", { class: "actions" }, rawPrev, rawNext)),
    commands,
    manage,
  );

  async function ready() {
    try {
      device = await api("GET", path);
    } catch (error) {
      clear(element, h("h1", {}, "Device not found"), h("p", {}, error.message));
      return;
    }
    drawDetails();
    drawManage();
    const [metricList, latestValues] = await Promise.all([api("GET", `${path}/metrics`), api("GET", `${path}/telemetry/latest`)]);
    metrics = metricList.items.map((m) => m.metric).sort();
    setMetrics(metrics);
    for (const [metric, v] of Object.entries(latestValues.metrics)) latest.set(metric, v);
    drawLatest();
    feed.connect();
    await Promise.all([seedLive(), loadAggregate(), loadRaw(), commandsView.probe()]);
  }

  return {
    element,
    ready: ready(),
    teardown: () => {
      feed.stop();
      commandsView.stop();
      liveChart.destroy();
      aggChart.destroy();
      if (window.iotcoreLiveFeed === feed) window.iotcoreLiveFeed = null;
    },
  };
}

// Commands (issue 14's contract). The section stays hidden when the server answers 404: that
// server has no commands yet.
function commandsSection(section, path, admin) {
  const list = h("div", { id: "command-list" });
  const known = new Map();
  const timers = new Set();
  let stopped = false;

  function draw() {
    const rows = [...known.values()]
      .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)))
      .map((c) =>
        h(
          "tr",
          { dataset: { commandId: c.command_id } },
          h("td", {}, c.name),
          h("td", {}, h("code", {}, JSON.stringify(c.params ?? {}))),
          h("td", {}, h("span", { class: `badge ${c.status}` }, c.status)),
          h("td", {}, c.result === undefined || c.result === null ? "" : h("code", {}, JSON.stringify(c.result))),
          h("td", {}, formatTime(c.created_at)),
        ),
      );
    clear(list, rows.length ? table("Commands", ["Name", "Parameters", "Status", "Result", "Sent"], rows, { id: "commands-table" }) : h("p", { class: "empty" }, "No commands yet."));
  }

  // Until it ends, a command's status is polled (the stream's command events only speed it up).
  function watch(commandId) {
    const tick = async () => {
      if (stopped) return;
      try {
        const command = await api("GET", `${path}/commands/${commandId}`);
        known.set(commandId, command);
        draw();
        if (TERMINAL.has(command.status)) return;
      } catch {
        // keep polling: the next tick may succeed
      }
      const timer = setTimeout(() => {
        timers.delete(timer);
        tick();
      }, 1000);
      timers.add(timer);
    };
    tick();
  }

  function form() {
    const name = h("input", { name: "command_name", required: true, pattern: "[A-Za-z0-9_.:\\-]{1,64}", autocomplete: "off" });
    const params = h("textarea", { name: "params", rows: "3" });
    params.value = "{}";
    const ttl = h("input", { name: "ttl_s", type: "number", min: "10", max: "86400", value: "3600" });
    const submit = h("button", { type: "submit" }, "Send command");
    const el = h("form", { id: "command-form" }, field("Command", name), field("Parameters (JSON object)", params), field("Expires after (s)", ttl), h("p", { class: "actions" }, submit));
    el.addEventListener("submit", async (event) => {
      event.preventDefault();
      let parsed;
      try {
        parsed = JSON.parse(params.value || "{}");
      } catch {
        flash("Parameters are not valid JSON.", "error");
        return;
      }
      try {
        const answer = await api("POST", `${path}/commands`, { body: { name: name.value.trim(), params: parsed, ttl_s: Number(ttl.value) } });
        known.set(answer.command_id, { ...answer, name: name.value.trim(), params: parsed, created_at: new Date().toISOString() });
        draw();
        flash("Command sent.");
        watch(answer.command_id);
      } catch (error) {
        flash(`${error.message} ${error.details.map((d) => d.problem).join("; ")}`, "error");
      }
    });
    return el;
  }

  return {
    async probe() {
      try {
        const page = await api("GET", `${path}/commands`, { query: { limit: 20 } });
        for (const c of page.items) known.set(c.command_id, c);
      } catch (error) {
        if (error.status === 404) return; // no commands on this server
        throw error;
      }
      clear(section, h("h2", { id: "commands-h" }, "Commands"), admin ? form() : null, list);
      section.hidden = false;
      draw();
      for (const c of known.values()) if (!TERMINAL.has(c.status)) watch(c.command_id);
    },
    update(event) {
      if (!event.command_id || !known.has(event.command_id)) return;
      known.set(event.command_id, { ...known.get(event.command_id), ...event });
      draw();
    },
    stop() {
      stopped = true;
      for (const timer of timers) clearTimeout(timer);
    },
  };
}
