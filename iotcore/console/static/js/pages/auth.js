// Sign up and log in: the session endpoints set the refresh cookie; the access token stays here.
import { logIn, signUp } from "../api.js";
import { h, field, flash } from "../dom.js";

export function authPage(mode) {
  const signup = mode === "signup";
  const email = h("input", { type: "email", name: "email", required: true, autocomplete: "username" });
  const password = h("input", {
    type: "password",
    name: "password",
    required: true,
    minlength: signup ? "10" : "1",
    autocomplete: signup ? "new-password" : "current-password",
  });
  const tenant = signup ? h("input", { name: "tenant_name", required: true, autocomplete: "organization" }) : null;
  const submit = h("button", { type: "submit" }, signup ? "Sign up" : "Log in");
  const form = h(
    "form",
    { class: "card narrow", "aria-label": signup ? "Sign up" : "Log in" },
    field("E-mail", email),
    field("Password", password, signup ? "At least 10 characters." : null),
    tenant ? field("Organisation", tenant) : null,
    h("p", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      if (signup) await signUp(email.value, password.value, tenant.value);
      else await logIn(email.value, password.value);
      window.location.hash = "#/devices";
    } catch (error) {
      flash(error.details.length ? `${error.message} ${error.details.map((d) => d.problem).join("; ")}` : error.message, "error");
      submit.disabled = false;
    }
  });
  const other = signup
    ? h("p", {}, "Have an account? ", h("a", { href: "#/login" }, "Log in"))
    : h("p", {}, "New here? ", h("a", { href: "#/signup" }, "Create an account"));
  return { element: h("section", {}, h("h1", {}, signup ? "Sign up" : "Log in"), form, other) };
}
