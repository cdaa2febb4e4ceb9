// Recognize (who is in the photo), detect only, or verify two photos; boxes drawn on the photo.
import { api, finished, upload, userName } from "./api.js";
import { dropZone, h, photoWithBoxes, replace } from "./dom.js";

const MODES = [
  { value: "search", label: "Recognize" },
  { value: "detect", label: "Detect only" },
  { value: "verify", label: "Verify two photos" },
];
// Enough candidates per face that the slider can lower the threshold without asking again.
const CANDIDATES = 5;

function stageTimes(job) {
  const rows = Object.entries(job.stages ?? {}).map(([stage, times]) => {
    const took = times.finished_at && times.started_at ? (times.finished_at - times.started_at) * 1000 : null;
    return h("tr", {}, h("th", { scope: "row" }, stage), h("td", { class: "num" }, took === null ? "–" : `${took.toFixed(1)} ms`));
  });
  return h("div", { class: "table-wrap" }, h("table", { id: "stage-times" },
    h("caption", { class: "muted" }, `Time per stage; upload to result ${job.query_time_ms?.toFixed(1) ?? "–"} ms`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "stage"), h("th", { scope: "col", class: "num" }, "took"))),
    h("tbody", {}, rows)));
}

export async function render(view) {
  let mode = "search";
  let pack = null;
  let initial = 0.3; // where the API cannot say (the vector database is down)
  let gallery = null; // faces the API's default threshold was chosen for (the threshold searches use now)
  try {
    const pipeline = await api("GET", "/v1/pipeline");
    pack = pipeline.model_pack;
    initial = Number(pipeline.threshold ?? initial);
    gallery = pipeline.gallery_size ?? null;
  } catch { /* the page still works, from the fallback threshold */ }
  const slider = h("input", { type: "range", id: "threshold", min: "-1", max: "1", step: "0.01", value: String(initial) });
  const sliderValue = h("output", { for: "threshold", id: "threshold-value" }, initial.toFixed(2));
  const result = h("div", { id: "result", "aria-live": "polite" });
  const inputs = h("div");
  let redraw = () => {};
  slider.addEventListener("input", () => { sliderValue.textContent = Number(slider.value).toFixed(2); redraw(); });

  const modeChoice = h("fieldset", {}, h("legend", {}, "Mode"),
    MODES.map((each) => h("label", { class: "inline" },
      h("input", { type: "radio", name: "mode", value: each.value, checked: each.value === mode,
        onchange: () => { mode = each.value; showInputs(); } }),
      each.label)));

  function showInputs() {
    replace(result);
    redraw = () => {};
    if (mode === "verify") {
      let first = null;
      const firstZone = dropZone({ id: "photo", label: "First photo", onFiles: ([file]) => { first = file; } });
      const secondZone = dropZone({ id: "second-photo", label: "Second photo", onFiles: ([file]) => { if (first) verify(first, file); } });
      replace(inputs, h("div", { class: "row" }, firstZone, secondZone),
        h("p", { class: "muted" }, "Pick the first photo, then the second: they are compared at once."));
    } else {
      replace(inputs, dropZone({ id: "photo", label: mode === "search" ? "Photo to recognize" : "Photo to detect faces in",
        onFiles: ([file]) => (mode === "search" ? search(file) : detect(file)) }));
    }
  }

  function working(text) { replace(result, h("p", { class: "muted" }, text)); }
  function failed(error) { replace(result, h("p", { class: "error", role: "alert" }, `Failed: ${error.message ?? error}`)); }
  function jobFailed(job) { return job.state === "failed" ? `${job.error?.message} (${job.error?.code})` : null; }

  function answer(job, ...parts) {
    replace(result, parts, h("h2", {}, "Time per stage"), stageTimes(job),
      h("details", {}, h("summary", {}, "Raw JSON"), h("pre", { id: "raw-json" }, JSON.stringify(job, null, 2))));
  }

  async function search(file) {
    working(`Recognizing ${file.name}…`);
    const form = new FormData();
    form.append("file", file);
    let job;
    try {
      job = await finished(await upload("/v1/search", form, { query: { wait: 60, threshold: -1, limit: CANDIDATES } }));
    } catch (error) { failed(error); return; }
    const problem = jobFailed(job);
    const faces = job.result?.faces ?? [];
    const people = new Map();
    for (const face of faces) for (const match of face.matches) people.set(match.user_id, await userName(match.user_id));
    const src = URL.createObjectURL(file);
    const labelled = () => faces.map((face) => {
      const best = face.matches.find((match) => match.similarity >= Number(slider.value));
      return best
        ? { box: face.box, known: true, label: `${people.get(best.user_id)} ${best.similarity.toFixed(2)}`, userId: best.user_id }
        : { box: face.box, known: false, label: "unknown" };
    });
    const photo = photoWithBoxes(src, `${file.name} with ${faces.length} face(s) outlined`, labelled());
    const list = h("ol", { id: "faces-found" });
    redraw = () => {
      const faceLabels = labelled();
      photo.redraw(faceLabels);
      replace(list, faceLabels.map((face) => h("li", {}, face.label)));
    };
    redraw();
    answer(job, problem ? h("p", { class: "error" }, problem) : null,
      h("p", {}, `${faces.length} face(s) found with ${job.model_pack ?? "the active pack"}.`), photo, list);
  }

  async function detect(file) {
    working(`Detecting faces in ${file.name}…`);
    const form = new FormData();
    form.append("file", file);
    let job;
    try { job = await finished(await upload("/v1/detect", form, { query: { wait: 60 } })); } catch (error) { failed(error); return; }
    const faces = job.result?.faces ?? [];
    const boxes = faces.map((face) => ({ box: face.box, known: true, label: `score ${face.score.toFixed(2)}` }));
    answer(job, jobFailed(job) ? h("p", { class: "error" }, jobFailed(job)) : null,
      h("p", {}, `${faces.length} face(s) found.`),
      photoWithBoxes(URL.createObjectURL(file), `${file.name} with ${faces.length} face(s) outlined`, boxes));
  }

  async function verify(first, second) {
    working(`Comparing ${first.name} with ${second.name}…`);
    const form = new FormData();
    form.append("file", first);
    form.append("second_file", second);
    let job;
    try { job = await finished(await upload("/v1/verify", form, { query: { wait: 60 } })); } catch (error) { failed(error); return; }
    const verdict = h("p", { id: "verdict" });
    redraw = () => {
      const similarity = job.result?.similarity;
      if (similarity === undefined) { verdict.textContent = jobFailed(job) ?? "no answer"; return; }
      const same = similarity >= Number(slider.value);
      verdict.textContent = `similarity ${similarity.toFixed(2)}: ${same ? "the same person" : "different people"} at threshold ${Number(slider.value).toFixed(2)}`;
      verdict.className = same ? "ok" : "error";
    };
    redraw();
    answer(job, verdict, h("div", { class: "row" },
      h("img", { src: URL.createObjectURL(first), alt: `first photo, ${first.name}` }),
      h("img", { src: URL.createObjectURL(second), alt: `second photo, ${second.name}` })));
  }

  replace(view, h("h1", {}, "Recognize"),
    h("form", { class: "card", onsubmit: (event) => event.preventDefault() },
      modeChoice,
      h("label", { for: "threshold" }, "Similarity threshold"),
      h("div", {}, slider, " ", sliderValue),
      h("p", { class: "muted" }, `${pack ? `Active pack ${pack.name}, calibrated threshold ${pack.threshold ?? "–"}; the API's default is ${initial.toFixed(2)}${gallery === null ? "" : ` (chosen for a gallery of ${gallery} faces)`}. ` : ""}Moving the slider re-filters the answer; nothing is uploaded again.`),
      inputs),
    result);
  showInputs();
}
