// The device list (status filter and paging through the API, search within the loaded page)
// and the claim form.
import { api, atLeast } from "../api.js";
import { h, clear, field, flash, formatTime, table } from "../dom.js";

const PAGE = 25;

// Presence (docs/api.md): online since the session began, or offline since it ended.
export function presence(device) {
  if (!("connected" in device)) return "–";
  if (device.connected) return device.connected_at ? `online since ${formatTime(device.connected_at)}` : "online";
  return device.disconnected_at ? `offline since ${formatTime(device.disconnected_at)}` : "offline";
}

export function devicesPage() {
  const search = h("input", { type: "search", name: "q", placeholder: "name, serial or label" });
  const status = h(
    "select",
    { name: "status" },
    ["", "unclaimed", "claimed", "active", "rekey_pending"].map((s) => h("option", { value: s }, s || "any")),
  );
  const list = h("div", { "aria-live": "polite" });
  const prev = h("button", { type: "button", class: "secondary", disabled: true }, "Previous page");
  const next = h("button", { type: "button", class: "secondary", disabled: true }, "Next page");
  const cursors = [null];
  let page = 0;
  let items = [];

  const matches = (device, q) => {
    if (!q) return true;
    const text = [device.name || "", device.serial_number, device.model, ...Object.entries(device.labels).flat()];
    return text.join(" ").toLowerCase().includes(q.toLowerCase());
  };

  function draw() {
    const shown = items.filter((d) => matches(d, search.value.trim()));
    const rows = shown.map((d) =>
      h(
        "tr",
        {},
        h("td", {}, h("a", { href: `#/devices/${d.device_id}` }, d.name || d.serial_number)),
        h("td", {}, d.serial_number),
        h("td", {}, h("span", { class: `badge ${d.status}` }, d.status)),
        h("td", {}, presence(d)),
        h("td", {}, formatTime(d.last_seen_at)),
      ),
    );
    clear(list, 
      rows.length
        ? table(`Devices, page ${page + 1}`, ["Name", "Serial", "Status", "Presence", "Last seen"], rows, { id: "devices" })
        : h("p", { class: "empty" }, items.length ? "No device on this page matches." : "No devices yet."),
    );
  }

  async function load() {
    try {
      const answer = await api("GET", "/devices", {
        query: { limit: PAGE, cursor: cursors[page], status: status.value },
      });
      items = answer.items;
      cursors[page + 1] = answer.next_cursor;
      prev.disabled = page === 0;
      next.disabled = !answer.next_cursor;
      draw();
    } catch (error) {
      flash(error.message, "error");
    }
  }

  search.addEventListener("input", draw);
  status.addEventListener("change", () => {
    cursors.length = 1;
    page = 0;
    load();
  });
  prev.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    load();
  });
  next.addEventListener("click", () => {
    page += 1;
    load();
  });

  const element = h(
    "section",
    {},
    h("h1", {}, "Devices"),
    atLeast("admin") ? h("p", {}, h("a", { href: "#/claim", class: "button" }, "Claim a device")) : null,
    h("div", { class: "filters" }, field("Search this page", search), field("Status", status)),
    list,
    h("p", { class: "actions" }, prev, next),
  );
  return { element, ready: load() };
}

export function claimPage() {
  const serial = h("input", { name: "serial_number", required: true, autocomplete: "off" });
  const code = h("input", { name: "claim_code", required: true, autocomplete: "off", placeholder: "XXXXX-XXXXX" });
  const name = h("input", { name: "name", maxlength: "200", autocomplete: "off" });
  const submit = h("button", { type: "submit" }, "Claim");
  const form = h(
    "form",
    { class: "card narrow", "aria-label": "Claim a device" },
    field("Serial number", serial),
    field("Claim code", code, "Printed on the device."),
    field("Name (optional)", name),
    h("p", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const body = { serial_number: serial.value.trim(), claim_code: code.value.trim() };
      if (name.value.trim()) body.name = name.value.trim();
      const device = await api("POST", "/devices/claim", { body });
      flash(`Claimed ${device.name || device.serial_number}.`, "info", { keep: true });
      window.location.hash = `#/devices/${device.device_id}`;
    } catch (error) {
      flash(error.message, "error");
      submit.disabled = false;
    }
  });
  return { element: h("section", {}, h("h1", {}, "Claim a device"), form) };
}
