// Small DOM helpers: elements are built with textContent (never innerHTML), so stored attributes cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function showError(error) {
  const box = document.getElementById("error");
  const text = error instanceof Error ? error.message : String(error);
  box.textContent = text;
  box.hidden = !text;
}

export function clearError() {
  showError("");
}

// Run an async action, showing its failure in words instead of losing it.
export async function guarded(action) {
  try {
    clearError();
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  }
}

// A modal confirmation naming what is about to go; resolves to true when confirmed.
export function confirmDialog(message, action = "Delete") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = message;
  document.getElementById("confirm-ok").textContent = action;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// Attributes of a record (all but the underscore fields) as a definition list.
export function attributeList(record) {
  const list = h("dl", { class: "attrs" });
  for (const [key, value] of Object.entries(record)) {
    if (key.startsWith("_")) continue;
    list.append(h("dt", {}, key), h("dd", {}, typeof value === "string" ? value : JSON.stringify(value)));
  }
  return list.childElementCount ? list : null;
}

// A drop zone around a file input: drop, paste (while the zone's view is shown) or pick files.
export function dropZone(id, label, multiple, onFiles) {
  const input = h("input", { type: "file", id, accept: "image/*", multiple });
  input.addEventListener("change", () => {
    if (input.files.length) onFiles([...input.files]);
    input.value = "";
  });
  const zone = h("div", { class: "drop" }, h("label", { for: id }, label), input,
    h("p", { class: "hint" }, "Drop images here, paste one (Ctrl+V), or choose files."));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = [...(event.dataTransfer?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) onFiles(multiple ? files : files.slice(0, 1));
  });
  return zone;
}

// An <img> whose source arrives later (a blob URL), with a placeholder until then or when there is none.
export function lazyImage(alt, source) {
  const image = h("img", { alt, width: 160, height: 160, class: "thumb pending", decoding: "async" });
  Promise.resolve(source).then((url) => {
    if (url) {
      image.src = url;
      image.classList.remove("pending");
    } else {
      image.classList.replace("pending", "missing");
      image.alt = `${alt} (no thumbnail)`;
    }
  });
  return image;
}
