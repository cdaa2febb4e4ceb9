// People: a searchable, paged list; one person's page with their faces, enrolment and erasure.
import { api, ApiProblem, finished, session, upload } from "./api.js";
import { dropZone, formatTime, h, photoWithBoxes, replace, toast } from "./dom.js";

const PAGE = 20;
const UPLOADS_AT_ONCE = 2;

function errorText(error) { return error instanceof ApiProblem ? `${error.detail} (${error.code})` : String(error); }

export async function renderList(view) {
  let query = "";
  const previous = []; // the `after` of each page before this one, for "Previous"
  let after = 0;
  const table = h("div", { class: "table-wrap" });
  const paging = h("div");
  const searchBox = h("input", { type: "search", id: "people-search", value: query, placeholder: "name or email" });

  let loads = 0; // the newest load's number: an answer to an older one (the unfiltered first page, a page left) is dropped
  async function load() {
    const mine = ++loads;
    const page = await api("GET", "/v1/users", { query: { after, limit: PAGE, q: query } });
    if (mine !== loads) return; // a newer search or page was asked for while this one was on its way
    const rows = page.items.map((user) => h("tr", { dataset: { userId: String(user.id) } },
      h("td", {}, h("a", { href: `#/people/${user.id}` }, user.full_name || "(no name)")),
      h("td", {}, user.email),
      h("td", {}, user.is_active ? "active" : "inactive")));
    replace(table, h("table", { id: "people" },
      h("thead", {}, h("tr", {}, ["name", "email", "state"].map((title) => h("th", { scope: "col" }, title)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "3", class: "muted" }, "nobody found")))));
    replace(paging,
      h("button", { type: "button", class: "secondary", disabled: !previous.length,
        onclick: () => { after = previous.pop(); load(); } }, "Previous page"),
      h("button", { type: "button", class: "secondary", disabled: page.next_after === null,
        onclick: () => { previous.push(after); after = page.next_after; load(); } }, "Next page"));
  }

  const search = h("form", { class: "card", role: "search" },
    h("label", { for: "people-search" }, "Search by name or email"), searchBox,
    h("div", {}, h("button", { type: "submit" }, "Search")));
  search.addEventListener("submit", (event) => {
    event.preventDefault();
    query = searchBox.value.trim();
    previous.length = 0;
    after = 0;
    load();
  });

  let create = null;
  if (session.can("write")) {
    const email = h("input", { type: "email", id: "new-email", required: true, autocomplete: "off" });
    const name = h("input", { type: "text", id: "new-name", autocomplete: "off" });
    const status = h("p", { role: "status" });
    create = h("form", { class: "card", id: "create-person" },
      h("h2", {}, "Add a person"),
      h("label", { for: "new-name" }, "Full name"), name,
      h("label", { for: "new-email" }, "Email"), email,
      h("div", {}, h("button", { type: "submit" }, "Create")), status);
    create.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const user = await api("POST", "/v1/users", { json: { email: email.value.trim(), full_name: name.value.trim() } });
        status.className = "ok";
        status.replaceChildren("Created ", h("a", { href: `#/people/${user.id}` }, user.full_name || user.email), ".");
        email.value = "";
        name.value = "";
        await load();
      } catch (error) {
        status.className = "error";
        status.textContent = errorText(error);
      }
    });
  }
  replace(view, h("h1", {}, "People"), search, create, table, paging);
  await load();
}

function faceCard(face, onErase) {
  const figure = h("figure", { dataset: { faceId: String(face.id) } },
    h("img", { class: "crop", src: face.crop_url, alt: `aligned crop of face ${face.id}` }),
    photoWithBoxes(face.photo_url, `enrolled photo of face ${face.id}, the enrolled face outlined`,
      [{ box: face.box, known: true, label: `face ${face.id}` }]),
    h("figcaption", {},
      `Face ${face.id} · enrolled ${formatTime(face.created_at)} · pack ${face.model_pack}`,
      face.faces_seen > 1 ? ` · ${face.faces_seen} faces in the photo, the largest enrolled` : ""));
  if (onErase) {
    figure.append(h("button", { type: "button", class: "danger", onclick: () => onErase(face) }, `Erase face ${face.id}`));
  }
  return figure;
}

function confirmDialog(text, action) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { id: "confirm", "aria-labelledby": "confirm-text" },
      h("p", { id: "confirm-text" }, text),
      h("form", { method: "dialog" },
        h("button", { type: "submit", value: "cancel", class: "secondary" }, "Cancel"),
        h("button", { type: "submit", value: "confirm", class: "danger" }, action)));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "confirm"); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

function outcomeOf(job) {
  if (job.state === "done") return { text: `enrolled (face ${job.result?.face_id})`, ok: true };
  if (job.state === "failed") return job.error?.code === "no_face"
    ? { text: "no face", ok: false } : { text: `error: ${job.error?.code}`, ok: false };
  return { text: `still ${job.state}`, ok: false };
}

async function enrollOne(userId, file, row) {
  const form = new FormData();
  form.append("file", file);
  try {
    const job = await finished(await upload(`/v1/users/${userId}/faces`, form,
      { query: { wait: 60 }, onProgress: (share) => { row.progress.value = share; } }));
    row.progress.value = 1;
    return outcomeOf(job);
  } catch (error) {
    row.progress.value = 1;
    if (error instanceof ApiProblem && error.code === "no_face") return { text: "no face", ok: false };
    return { text: `error: ${error.code ?? error}`, ok: false };
  }
}

export async function renderPerson(view, id) {
  const userId = Number(id);
  let user = await api("GET", `/v1/users/${userId}`);
  const canWrite = session.can("write");
  const heading = h("h1");
  const facts = h("p", { class: "muted", id: "person-facts" });
  const gallery = h("div", { class: "faces", id: "faces" });
  const uploads = h("ul", { class: "uploads", id: "uploads" });
  let faces = [];

  function showUser() {
    heading.textContent = user.full_name || user.email;
    facts.textContent = `${user.email} · ${user.is_active ? "active" : "inactive"} · added ${formatTime(user.created_at)}`;
  }

  async function eraseFace(face) {
    if (!(await confirmDialog(`Erase face ${face.id}? Its row, its embeddings in every pack, its photo and crop are erased.`, "Erase face"))) return;
    try {
      await api("DELETE", `/v1/faces/${face.id}`);
      toast(`Face ${face.id} erased.`);
      await loadFaces();
    } catch (error) { toast(errorText(error)); }
  }

  async function loadFaces() {
    faces = await api("GET", `/v1/users/${userId}/faces`);
    replace(gallery, faces.length ? faces.map((face) => faceCard(face, canWrite ? eraseFace : null)) : h("p", { class: "muted" }, "No face enrolled yet."));
  }

  const parts = [h("p", {}, h("a", { href: "#/people" }, "← People")), heading, facts];
  if (canWrite) {
    const name = h("input", { type: "text", id: "edit-name", value: user.full_name });
    const email = h("input", { type: "email", id: "edit-email", value: user.email, required: true });
    const active = h("input", { type: "checkbox", id: "edit-active", checked: user.is_active });
    const status = h("p", { role: "status" });
    const edit = h("form", { class: "card", id: "edit-person" },
      h("h2", {}, "Edit"),
      h("label", { for: "edit-name" }, "Full name"), name,
      h("label", { for: "edit-email" }, "Email"), email,
      h("label", { class: "check", for: "edit-active" }, active, "Active (an inactive person is neither enrolled nor found)"),
      h("div", {},
        h("button", { type: "submit" }, "Save"),
        h("button", { type: "button", class: "secondary", id: "deactivate", onclick: async () => {
          active.checked = false;
          edit.requestSubmit();
        } }, "Deactivate"),
        h("button", { type: "button", class: "danger", id: "erase-person", onclick: eraseUser }, "Erase person")),
      status);
    edit.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.className = "muted";
      status.textContent = "Saving…";
      try {
        user = await api("PATCH", `/v1/users/${userId}`, { json: { full_name: name.value.trim(), email: email.value.trim(), is_active: active.checked } });
        showUser();
        status.className = "ok";
        status.textContent = "Saved.";
      } catch (error) {
        status.className = "error";
        status.textContent = errorText(error);
      }
    });

    async function eraseUser() {
      const text = `Erase ${user.full_name || user.email} (${user.email})? This erases the person, their ${faces.length} enrolled face(s) with their embeddings in every model pack, and their photos and crops in storage. It cannot be undone.`;
      if (!(await confirmDialog(text, "Erase person"))) return;
      try {
        await api("DELETE", `/v1/users/${userId}`);
        toast(`${user.full_name || user.email} erased.`);
        window.location.hash = "#/people";
      } catch (error) { status.className = "error"; status.textContent = errorText(error); }
    }

    const enroll = h("section", { "aria-labelledby": "enroll-title" },
      h("h2", { id: "enroll-title" }, "Enroll photos"),
      dropZone({ id: "enroll-files", label: "Photos to enroll", multiple: true, onFiles: enrollAll }),
      uploads);
    parts.push(edit, enroll);

    async function enrollAll(files) {
      const rows = files.map((file) => {
        const progress = h("progress", { max: "1", value: 0, "aria-label": `upload of ${file.name}` });
        const outcome = h("span", { class: "outcome" }, "waiting");
        const item = h("li", { dataset: { file: file.name } }, `${file.name} `, progress, " ", outcome);
        uploads.append(item);
        return { file, progress, outcome, item };
      });
      const queue = [...rows];
      const worker = async () => {
        for (let row = queue.shift(); row; row = queue.shift()) {
          row.outcome.textContent = "uploading";
          const result = await enrollOne(userId, row.file, row);
          row.outcome.textContent = result.text;
          row.outcome.className = `outcome ${result.ok ? "ok" : "error"}`;
        }
      };
      await Promise.all(Array.from({ length: Math.min(UPLOADS_AT_ONCE, rows.length) }, worker));
      await loadFaces();
    }
  }
  parts.push(h("h2", {}, "Faces"), gallery);
  showUser();
  replace(view, parts);
  await loadFaces();
}
