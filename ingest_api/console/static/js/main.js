// Sign-in and the pages, chosen by the URL's hash (#/people/12), so the browser's back button works.
import { api, ApiProblem, forgetNames, session } from "./api.js";
import { h, replace } from "./dom.js";
import * as keys from "./keys.js";
import * as people from "./people.js";
import * as pipeline from "./pipeline.js";
import * as recognize from "./recognize.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let leave = null; // the shown page's clean-up (stops live refreshes)

const routes = [
  { pattern: /^#\/recognize$/, page: recognize.render, link: "#/recognize" },
  { pattern: /^#\/people\/(\d+)$/, page: people.renderPerson, link: "#/people" },
  { pattern: /^#\/people$/, page: people.renderList, link: "#/people" },
  { pattern: /^#\/pipeline$/, page: pipeline.render, link: "#/pipeline" },
  { pattern: /^#\/keys$/, page: keys.render, link: "#/keys", needs: "admin" },
];

function signInPage(message) {
  const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", required: true });
  const status = h("p", { class: "error", role: "alert" }, message ?? "");
  const form = h("form", { class: "card", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title" }, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key (from `fecapass keys create`). It is kept in this browser tab only."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("div", {}, h("button", { type: "submit" }, "Sign in")),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const me = await api("GET", "/v1/me", { key: input.value.trim() });
      session.save(input.value.trim(), me.scope);
      show();
    } catch (error) {
      status.textContent = error instanceof ApiProblem ? error.detail : String(error);
    }
  });
  replace(view, form);
  input.focus();
}

function chrome(signedIn) {
  nav.hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  const whoami = document.getElementById("whoami");
  whoami.hidden = !signedIn;
  whoami.textContent = signedIn ? `${session.scope} key` : "";
  for (const link of nav.querySelectorAll("[data-needs]")) link.hidden = !session.can(link.dataset.needs);
}

async function show() {
  if (leave) { leave(); leave = null; }
  if (!session.key) { chrome(false); signInPage(); return; }
  chrome(true);
  const hash = window.location.hash || "#/recognize";
  const route = routes.find((each) => each.pattern.test(hash)) ?? routes[0];
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === route.link) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (route.needs && !session.can(route.needs)) {
    replace(view, h("p", { class: "error" }, `This page needs an ${route.needs} key.`));
    return;
  }
  const match = hash.match(route.pattern);
  // Each page renders into a container of its own: a page still loading when the user moves on writes into
  // its detached container, never over the page shown now.
  const container = h("div");
  replace(view, container);
  try {
    const cleanUp = (await route.page(container, ...match.slice(1))) ?? null;
    if (container.isConnected) leave = cleanUp; else if (cleanUp) cleanUp();
  } catch (error) {
    if (!container.isConnected) return;
    if (error instanceof ApiProblem && error.status === 401) { session.clear(); chrome(false); signInPage(error.detail); return; }
    replace(container, h("p", { class: "error", role: "alert" }, String(error.message ?? error)));
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.clear();
  forgetNames();
  window.location.hash = "";
  show();
});
window.addEventListener("hashchange", show);

// The scope is read again on each load: a key revoked since sign-in goes back to the sign-in page.
(async () => {
  if (session.key) {
    try {
      const me = await api("GET", "/v1/me");
      session.save(session.key, me.scope);
    } catch (error) {
      session.clear();
      chrome(false);
      signInPage(error instanceof ApiProblem ? error.detail : String(error));
      return;
    }
  }
  show();
})();
