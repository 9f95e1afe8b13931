// DOM helpers. Text always goes in as text nodes: device names, labels and metric names are
// chosen by other people and must never be parsed as markup (no HTML-string APIs here).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value" || key === "checked" || key === "selected") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Replace the children; arrays (nested too) are flattened, text becomes text nodes.
export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let keepFlash = false;

// A status message; with `keep`, it survives the next page change (a message about an action
// that also navigates).
export function flash(message, kind = "info", { keep = false } = {}) {
  keepFlash = keep;
  const box = document.getElementById("flash");
  box.className = kind;
  box.textContent = message;
}

export function clearFlash() {
  if (keepFlash) keepFlash = false;
  else flash("");
}

export function formatTime(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h("p", { class: "field" }, h("label", { for: id }, label), input, hint ? h("small", {}, hint) : null);
}

export function table(caption, headers, rows, attrs = {}) {
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      attrs,
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows),
    ),
  );
}

// A modal confirmation; resolves true when confirmed. With `typed`, the user must type it.
export function confirmDialog(title, message, { typed, action = "Confirm" } = {}) {
  return new Promise((resolve) => {
    const input = typed ? h("input", { autocomplete: "off", "aria-describedby": "confirm-msg" }) : null;
    const ok = h("button", { type: "submit", class: "danger" }, action);
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", {}, title),
      h("p", { id: "confirm-msg" }, message),
      input ? field(`Type ${typed} to confirm`, input) : null,
      h("p", { class: "actions" }, h("button", { type: "button", value: "cancel", class: "secondary" }, "Cancel"), ok),
    );
    const dialog = h("dialog", { "aria-label": title }, form);
    const done = (value) => {
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    form.querySelector("button[value=cancel]").addEventListener("click", () => done(false));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (typed && input.value !== typed) {
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      done(true);
    });
    document.body.append(dialog);
    dialog.showModal();
    (input || ok).focus();
  });
}
