// Users and roles of the tenant (admins and owners; the API enforces who may change whom).
import { all, api, currentSession } from "../api.js";
import { h, clear, confirmDialog, field, flash, formatTime, table } from "../dom.js";

export function usersPage() {
  const me = currentSession();
  const owner = me.role === "owner";
  const box = h("div", { id: "users" });

  const mayManage = (user) => user.user_id !== me.user.user_id && (owner || user.role === "viewer");

  function roleControl(user) {
    if (!mayManage(user)) return user.role;
    const choices = owner ? ["owner", "admin", "viewer"] : ["viewer"];
    const select = h("select", { "aria-label": `Role of ${user.email}` }, choices.map((r) => h("option", { value: r }, r)));
    select.value = user.role;
    select.addEventListener("change", async () => {
      try {
        await api("PATCH", `/users/${user.user_id}`, { body: { role: select.value } });
        flash(`${user.email} is now ${select.value}.`);
      } catch (error) {
        flash(error.message, "error");
      }
      load();
    });
    return select;
  }

  async function load() {
    try {
      const users = await all("/users");
      const rows = users.map((u) => {
        const remove = mayManage(u) ? h("button", { type: "button", class: "danger small" }, "Remove") : null;
        if (remove) {
          remove.addEventListener("click", async () => {
            if (!(await confirmDialog("Remove user", `Remove ${u.email}? Their sessions end at once.`, { action: "Remove" }))) return;
            try {
              await api("DELETE", `/users/${u.user_id}`);
              flash(`Removed ${u.email}.`);
            } catch (error) {
              flash(error.message, "error");
            }
            load();
          });
        }
        return h("tr", {}, h("td", {}, u.email), h("td", {}, roleControl(u)), h("td", {}, formatTime(u.created_at)), h("td", {}, remove));
      });
      clear(box, table("Users", ["E-mail", "Role", "Added", ""], rows, { id: "users-table" }));
    } catch (error) {
      flash(error.message, "error");
    }
  }

  const email = h("input", { type: "email", name: "email", required: true, autocomplete: "off" });
  const password = h("input", { type: "password", name: "password", required: true, minlength: "10", autocomplete: "new-password" });
  const role = h("select", { name: "role" }, ["viewer", "admin"].map((r) => h("option", { value: r }, r)));
  const form = h("form", { class: "card", id: "add-user" }, h("h2", {}, "Add a user"), field("E-mail", email), field("Initial password", password, "At least 10 characters; share it privately."), field("Role", role), h("p", { class: "actions" }, h("button", { type: "submit" }, "Add user")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/users", { body: { email: email.value, password: password.value, role: role.value } });
      flash(`Added ${email.value}.`);
      form.reset();
      load();
    } catch (error) {
      flash(`${error.message} ${error.details.map((d) => d.problem).join("; ")}`, "error");
    }
  });
  return { element: h("section", {}, h("h1", {}, "Users"), box, form), ready: load() };
}
