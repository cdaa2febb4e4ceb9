// The pipeline: each stage's stream refreshed live, dead letters (replay and purge with a write key), the active
// model pack, and a job looked up by id.
import { api, ApiProblem, session } from "./api.js";
import { formatTime, h, replace, toast } from "./dom.js";

const REFRESH_MS = 2000;

function errorText(error) { return error instanceof ApiProblem ? `${error.detail} (${error.code})` : String(error); }

export async function render(view) {
  const stages = h("div", { class: "table-wrap", "aria-live": "off" });
  const pack = h("dl", { id: "model-pack" });
  const letters = h("div", { class: "table-wrap" });
  const refreshed = h("p", { class: "muted" });
  const canWrite = session.can("write");

  async function refresh() {
    const answer = await api("GET", "/v1/pipeline");
    const columns = ["backlog", "pending", "consumers", "lag", "oldest_pending_seconds", "dead_letters"];
    replace(stages, h("table", { id: "stages" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "stage"),
        columns.map((name) => h("th", { scope: "col", class: "num" }, name.replaceAll("_", " "))))),
      h("tbody", {}, answer.stages.map((row) => h("tr", { dataset: { stage: row.stage } },
        h("th", { scope: "row" }, row.stage),
        columns.map((name) => h("td", { class: "num" },
          row[name] === null ? "–" : name === "oldest_pending_seconds" ? `${row[name].toFixed(1)} s` : String(row[name]))))))));
    const facts = answer.model_pack;
    replace(pack, ["name", "family", "licence", "commercial_use", "threshold", "dim", "error"]
      .filter((name) => facts[name] !== undefined && facts[name] !== null)
      .map((name) => [h("dt", {}, name.replaceAll("_", " ")), h("dd", {}, String(facts[name]))]));
    refreshed.textContent = `Refreshed ${new Date().toLocaleTimeString()}, every ${REFRESH_MS / 1000} s.`;
  }

  async function loadLetters() {
    const found = await api("GET", "/v1/pipeline/dead-letters", { query: { count: 50 } });
    const act = (method, path, done) => async () => {
      try { await api(method, path); toast(done); await loadLetters(); await refresh(); } catch (error) { toast(errorText(error)); }
    };
    const rows = found.map((letter) => {
      const path = `/v1/pipeline/dead-letters/${letter.stage}/${encodeURIComponent(letter.message_id)}`;
      return h("tr", { dataset: { messageId: letter.message_id } },
        h("td", {}, letter.stage), h("td", {}, letter.message_id), h("td", {}, letter.job_id ?? "–"),
        h("td", {}, `${letter.error_code ?? "?"}: ${letter.error ?? ""}`),
        canWrite ? h("td", {},
          h("button", { type: "button", class: "secondary", onclick: act("POST", `${path}/replay`, `Replayed ${letter.message_id}.`) }, "Replay"),
          h("button", { type: "button", class: "danger", onclick: act("DELETE", path, `Purged ${letter.message_id}.`) }, "Purge")) : null);
    });
    replace(letters, h("table", { id: "dead-letters" },
      h("thead", {}, h("tr", {}, ["stage", "entry", "job", "reason"].map((title) => h("th", { scope: "col" }, title)),
        canWrite ? h("th", { scope: "col" }, "actions") : null)),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: canWrite ? "5" : "4", class: "muted" }, "no dead letters")))));
  }

  const jobId = h("input", { type: "text", id: "job-id", required: true, autocomplete: "off" });
  const jobResult = h("div", { "aria-live": "polite" });
  const lookup = h("form", { class: "card", id: "job-lookup" },
    h("h2", {}, "Look up a job"),
    h("label", { for: "job-id" }, "Job id"), jobId,
    h("div", {}, h("button", { type: "submit" }, "Look up")), jobResult);
  lookup.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const job = await api("GET", `/v1/jobs/${encodeURIComponent(jobId.value.trim())}`);
      replace(jobResult, h("p", {}, `${job.kind} job, ${job.state}`, job.finished_at ? `, finished ${formatTime(job.finished_at)}` : ""),
        h("pre", {}, JSON.stringify(job, null, 2)));
    } catch (error) { replace(jobResult, h("p", { class: "error", role: "alert" }, errorText(error))); }
  });

  replace(view, h("h1", {}, "Pipeline"),
    h("section", { "aria-labelledby": "streams-title" }, h("h2", { id: "streams-title" }, "Stages"), stages, refreshed),
    h("section", { "aria-labelledby": "pack-title" }, h("h2", { id: "pack-title" }, "Active model pack"), pack),
    h("section", { "aria-labelledby": "dead-title" }, h("h2", { id: "dead-title" }, "Dead letters"), letters),
    lookup);
  await Promise.all([refresh(), loadLetters()]);
  const timer = setInterval(() => refresh().catch((error) => { refreshed.textContent = errorText(error); }), REFRESH_MS);
  return () => clearInterval(timer);
}
