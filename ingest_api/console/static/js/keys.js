// API keys (admin keys only): list, create (the key is shown once) and revoke.
import { api, ApiProblem } from "./api.js";
import { formatTime, h, replace, toast } from "./dom.js";

function errorText(error) { return error instanceof ApiProblem ? `${error.detail} (${error.code})` : String(error); }

export async function render(view) {
  const table = h("div", { class: "table-wrap" });
  const created = h("div", { "aria-live": "polite" });

  async function load() {
    const keys = await api("GET", "/v1/keys");
    replace(table, h("table", { id: "keys" },
      h("thead", {}, h("tr", {}, ["id", "name", "scope", "prefix", "created", "state", ""].map((title) => h("th", { scope: "col" }, title)))),
      h("tbody", {}, keys.map((key) => h("tr", { dataset: { keyId: String(key.id) } },
        h("td", {}, String(key.id)), h("td", {}, key.name), h("td", {}, key.scope), h("td", {}, `${key.prefix}…`),
        h("td", {}, formatTime(key.created_at)),
        h("td", { class: "state" }, key.revoked_at ? `revoked ${formatTime(key.revoked_at)}` : "active"),
        h("td", {}, key.revoked_at ? null : h("button", { type: "button", class: "danger", "aria-label": `Revoke key ${key.id} (${key.name})`,
          onclick: async () => {
            try { await api("DELETE", `/v1/keys/${key.id}`); toast(`Key ${key.id} revoked; refused everywhere within 30 s.`); await load(); }
            catch (error) { toast(errorText(error)); }
          } }, "Revoke")))))));
  }

  const name = h("input", { type: "text", id: "key-name", required: true, autocomplete: "off" });
  const scope = h("select", { id: "key-scope" }, ["read", "write", "admin"].map((each) => h("option", { value: each }, each)));
  const form = h("form", { class: "card", id: "create-key" },
    h("h2", {}, "Create a key"),
    h("label", { for: "key-name" }, "Who or what uses it"), name,
    h("label", { for: "key-scope" }, "Scope"), scope,
    h("div", {}, h("button", { type: "submit" }, "Create key")), created);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const key = await api("POST", "/v1/keys", { json: { name: name.value.trim(), scope: scope.value } });
      replace(created, h("p", {}, `Key ${key.id} (${key.scope}) is shown only now; copy it:`),
        h("p", { class: "key-once", id: "new-key" }, key.key));
      name.value = "";
      await load();
    } catch (error) { replace(created, h("p", { class: "error", role: "alert" }, errorText(error))); }
  });

  replace(view, h("h1", {}, "API keys"), form, table);
  await load();
}
