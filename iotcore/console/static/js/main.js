// The router: one page per hash route; the pages follow the caller's role.
import { atLeast, currentSession, logOut, restore } from "./api.js";
import { h, clear, clearFlash, flash } from "./dom.js";
import { authPage } from "./pages/auth.js";
import { claimPage, devicesPage } from "./pages/devices.js";
import { devicePage } from "./pages/device.js";
import { keysPage } from "./pages/keys.js";
import { usersPage } from "./pages/users.js";

const routes = [
  [/^#\/login$/, () => authPage("login")],
  [/^#\/signup$/, () => authPage("signup")],
  [/^#\/devices$/, () => devicesPage()],
  [/^#\/claim$/, () => claimPage(), "admin"],
  [/^#\/devices\/([0-9a-f-]{36})$/, (m) => devicePage(m[1])],
  [/^#\/users$/, () => usersPage(), "admin"],
  [/^#\/api-keys$/, () => keysPage(), "admin"],
];

let teardown = null;
let firstRender = true;

function chrome() {
  const session = currentSession();
  const nav = document.getElementById("nav");
  nav.hidden = !session;
  for (const item of nav.querySelectorAll("[data-role]")) item.hidden = !atLeast(item.dataset.role);
  const who = document.getElementById("who");
  who.textContent = session ? `${session.user.email} · ${session.tenant.name} · ${session.role}` : "";
  for (const link of nav.querySelectorAll("a")) {
    if (window.location.hash.startsWith(link.getAttribute("href"))) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function render() {
  if (teardown) teardown();
  teardown = null;
  const main = document.getElementById("main");
  const hash = window.location.hash || "#/devices";
  const publicPage = hash === "#/login" || hash === "#/signup";
  if (!currentSession() && !publicPage) {
    window.location.replace("#/login");
    return;
  }
  if (currentSession() && publicPage) {
    window.location.replace("#/devices");
    return;
  }
  chrome();
  for (const [pattern, page, role] of routes) {
    const match = hash.match(pattern);
    if (!match) continue;
    clear(main);
    if (role && !atLeast(role)) {
      main.append(h("h1", {}, "Not allowed"), h("p", {}, `This page needs the ${role} role.`));
      return;
    }
    const view = page(match);
    main.append(view.element);
    teardown = view.teardown || null;
    const heading = main.querySelector("h1");
    document.title = heading ? `${heading.textContent} · iotcore` : "iotcore console";
    // Move focus to the new page (not on the first load: Tab then starts at the skip link).
    if (!firstRender) main.focus({ preventScroll: true });
    firstRender = false;
    if (view.ready) await view.ready;
    return;
  }
  clear(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/devices" }, "Back to devices")));
}

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await logOut();
  } finally {
    flash("Logged out.", "info", { keep: true });
    window.location.hash = "#/login";
    chrome();
  }
});
window.addEventListener("iotcore:logged-out", () => {
  flash("Your session ended; log in again.", "error", { keep: true });
  window.location.hash = "#/login";
});
window.addEventListener("hashchange", () => {
  clearFlash();
  render();
});

await restore();
await render();
document.body.dataset.ready = "true";
