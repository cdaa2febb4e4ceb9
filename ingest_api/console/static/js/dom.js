// Building elements from data without innerHTML: every string becomes a text node, so nothing the API
// returns (names, emails, error messages) can become markup.

export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "style") Object.assign(element.style, value);
    else if (name === "value" || name === "checked") element[name] = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat(Infinity).filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

export function replace(parent, ...children) {
  parent.replaceChildren(...children.flat(Infinity).filter((child) => child !== null && child !== undefined));
}

let toastTimer;
export function toast(message) {
  const box = document.getElementById("toast");
  box.textContent = message;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.textContent = ""; }, 5000);
}

// A file drop zone wrapping a labelled file input: dropping and picking end in the same callback.
export function dropZone({ id, label, multiple = false, onFiles }) {
  const input = h("input", { type: "file", id, accept: "image/*", multiple });
  input.addEventListener("change", () => { if (input.files.length) onFiles([...input.files]); });
  const zone = h("div", { class: "dropzone" },
    h("label", { for: id }, label),
    h("p", { class: "muted" }, multiple ? "Drop photos here, or pick them:" : "Drop a photo here, or pick one:"),
    input);
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = [...event.dataTransfer.files].filter((file) => file.type.startsWith("image/") || !file.type);
    if (files.length) onFiles(multiple ? files : files.slice(0, 1));
  });
  return zone;
}

// A photo with a box over each face; boxes are in the photo's pixels and placed in percent, so they stay on
// their face at any displayed size (phone width included).
export function photoWithBoxes(src, alt, boxes) {
  const img = h("img", { src, alt });
  const frame = h("div", { class: "photo" }, img);
  const place = () => {
    const width = img.naturalWidth, height = img.naturalHeight;
    if (!width || !height) return;
    frame.querySelectorAll(".box").forEach((node) => node.remove());
    for (const [index, face] of boxes.entries()) {
      const [x1, y1, x2, y2] = face.box;
      frame.append(h("div", {
        class: face.known === false ? "box unknown" : "box",
        dataset: { faceIndex: String(index) },
        role: "img",
        "aria-label": face.label,
        style: {
          left: `${(100 * x1) / width}%`, top: `${(100 * y1) / height}%`,
          width: `${(100 * (x2 - x1)) / width}%`, height: `${(100 * (y2 - y1)) / height}%`,
        },
      }, h("span", { class: "tag" }, face.label)));
    }
  };
  if (img.complete) place(); else img.addEventListener("load", place);
  frame.redraw = (next) => { boxes = next; place(); };
  return frame;
}

export function formatTime(value) {
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return date.toLocaleString();
}
