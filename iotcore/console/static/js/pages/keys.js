// API keys: the key is shown once, at creation or rotation, with a copy button.
import { all, api, currentSession } from "../api.js";
import { h, clear, confirmDialog, field, flash, formatTime, table } from "../dom.js";

export function keysPage() {
  const box = h("div", { id: "keys" });
  const secretBox = h("div", { id: "new-key", "aria-live": "polite" });

  function showOnce(created) {
    const value = h("input", { id: "new-key-value", readonly: true, value: created.key, "aria-label": `New key ${created.name}` });
    const copy = h("button", { type: "button", id: "copy-key" }, "Copy");
    copy.addEventListener("click", async () => {
      value.select();
      try {
        await navigator.clipboard.writeText(created.key);
        flash("Copied.");
      } catch {
        flash("Select the key and copy it by hand.", "error");
      }
    });
    const dismiss = h("button", { type: "button", class: "secondary" }, "Done");
    dismiss.addEventListener("click", () => clear(secretBox));
    clear(secretBox, 
      h("div", { class: "card notice" }, h("h2", {}, `Key for ${created.name}`), h("p", {}, "Copy it now: it is shown only once."), h("p", { class: "inline" }, value, copy, dismiss)),
    );
    value.focus();
    value.select();
  }

  async function load() {
    try {
      const keys = await all("/api-keys");
      const rows = keys.map((k) => {
        const rotate = h("button", { type: "button", class: "secondary small" }, "Rotate");
        const revoke = h("button", { type: "button", class: "danger small" }, "Revoke");
        rotate.addEventListener("click", async () => {
          if (!(await confirmDialog("Rotate key", `Replace ${k.name}? The old key keeps working for 24 hours.`, { action: "Rotate" }))) return;
          try {
            showOnce(await api("POST", `/api-keys/${k.api_key_id}/rotate`));
            load();
          } catch (error) {
            flash(error.message, "error");
          }
        });
        revoke.addEventListener("click", async () => {
          if (!(await confirmDialog("Revoke key", `Revoke ${k.name}? It is refused everywhere within a second.`, { action: "Revoke" }))) return;
          try {
            await api("DELETE", `/api-keys/${k.api_key_id}`);
            flash(`Revoked ${k.name}.`);
          } catch (error) {
            flash(error.message, "error");
          }
          load();
        });
        return h(
          "tr",
          {},
          h("td", {}, k.name),
          h("td", {}, k.role),
          h("td", {}, formatTime(k.created_at)),
          h("td", {}, k.expires_at ? formatTime(k.expires_at) : "never"),
          h("td", {}, formatTime(k.last_used_at)),
          h("td", {}, h("span", { class: "inline" }, rotate, revoke)),
        );
      });
      clear(box, rows.length ? table("API keys", ["Name", "Role", "Created", "Expires", "Last used", ""], rows, { id: "keys-table" }) : h("p", { class: "empty" }, "No API keys."));
    } catch (error) {
      flash(error.message, "error");
    }
  }

  const name = h("input", { name: "name", required: true, maxlength: "200", autocomplete: "off" });
  const roles = currentSession().role === "viewer" ? [] : ["viewer", "admin"];
  const role = h("select", { name: "role" }, roles.map((r) => h("option", { value: r }, r)));
  const expires = h("input", { type: "date", name: "expires_at" });
  const form = h("form", { class: "card", id: "create-key" }, h("h2", {}, "Create a key"), field("Name", name), field("Role", role), field("Expires (optional)", expires), h("p", { class: "actions" }, h("button", { type: "submit" }, "Create key")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), role: role.value };
    if (expires.value) body.expires_at = new Date(`${expires.value}T00:00:00Z`).toISOString();
    try {
      showOnce(await api("POST", "/api-keys", { body }));
      form.reset();
      load();
    } catch (error) {
      flash(`${error.message} ${error.details.map((d) => d.problem).join("; ")}`, "error");
    }
  });
  return { element: h("section", {}, h("h1", {}, "API keys"), secretBox, box, form), ready: load() };
}
