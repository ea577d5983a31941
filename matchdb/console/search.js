// Search: images dropped, pasted, picked or given by URL, each sent to visualKNN in turn (with a progress bar).

import { call, fileToBase64, NBITS, NEAR } from "./api.js";
import { recordCard } from "./collections.js";
import { dropZone, guarded, h, showError } from "./dom.js";

// Geometric matching (crops, small turns): its score is bits of 64; 10.9% is its threshold at FMR 1e-4 on the
// shared corpus (docs/accuracy.md). Only collections created with it keep the signatures it searches.
const GEOMETRIC = { nbits: 64, near: 10.9 };

export async function searchView(main, state) {
  if (!state.collections) {
    const data = await guarded(() => call("collections", {}, { method: "GET" }));
    state.collections = data ? data.collections : [];
  }
  if (!state.collections.length) {
    main.replaceChildren(h("h1", {}, "Search"), h("p", {}, "There is no collection to search yet: ",
      h("a", { href: "#collections" }, "create one"), " and insert records."));
    return;
  }
  const select = h("select", { id: "search-collection" }, state.collections.map((c) =>
    h("option", { value: c.id, selected: c.id === state.collection }, `${c.name} (${c.record_count})`)));
  select.addEventListener("change", () => { state.collection = select.value; });
  if (!state.collection || !state.collections.some((c) => c.id === state.collection)) state.collection = select.value;
  const kind = h("select", { id: "hash-type" }, h("option", { value: "bmh1" }, "bmh1"), h("option", { value: "phash" }, "phash"));
  const k = h("input", { id: "k", type: "number", min: 1, max: 100, value: 10 });
  const geometric = h("input", { id: "geometric", type: "checkbox" });
  const geometricAllowed = () => {
    const chosen = state.collections.find((c) => c.id === select.value);
    geometric.disabled = !(chosen && chosen.geometric);
    if (geometric.disabled) geometric.checked = false;
    geometric.title = geometric.disabled ? "Only for collections created with geometric: true" : "Match crops and small turns";
  };
  select.addEventListener("change", geometricAllowed);
  const url = h("input", { id: "query-url", type: "url", placeholder: "https://example.com/photo.jpg" });
  const progress = h("progress", { id: "progress", max: 1, value: 0, hidden: true });
  const progressText = h("span", { id: "progress-text", "aria-live": "polite" });
  const results = h("div", { id: "results" });
  const settings = () => ({
    collection: select.value, kind: kind.value, k: Math.max(1, Number(k.value) || 10), geometric: geometric.checked,
  });

  async function runAll(queries) {
    results.replaceChildren();
    progress.max = queries.length;
    progress.value = 0;
    progress.hidden = queries.length < 2;
    for (const [index, query] of queries.entries()) {
      progressText.textContent = queries.length > 1 ? `Searching ${index + 1} of ${queries.length}…` : "Searching…";
      await searchOne(query, settings(), results);
      progress.value = index + 1;
    }
    progressText.textContent = `${queries.length} image${queries.length === 1 ? "" : "s"} searched.`;
  }

  const zone = dropZone("search-files", "Images to search for", true, (files) =>
    runAll(files.map((file) => ({ name: file.name, file, preview: URL.createObjectURL(file) }))));
  const urlForm = h("form", { class: "row" }, h("label", { for: "query-url" }, "or an image URL"), url,
    h("button", { type: "submit" }, "Search"));
  urlForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (url.value) runAll([{ name: url.value, url: url.value, preview: null }]);
  });
  main.replaceChildren(h("h1", {}, "Search"),
    h("div", { class: "row" }, h("label", { for: "search-collection" }, "Collection"), select,
      h("label", { for: "hash-type" }, "Hash"), kind, h("label", { for: "k" }, "Answers (k)"), k,
      geometric, h("label", { for: "geometric" }, "Geometric (crops, small turns)")),
    zone, urlForm, h("div", { class: "row" }, progress, progressText), results);
  geometricAllowed();
  state.onPaste = (files) => runAll(files.map((file) => ({ name: file.name || "pasted image", file, preview: URL.createObjectURL(file) })));
}

async function searchOne(query, { collection, kind, k, geometric }, results) {
  const section = h("section", { class: "query", "aria-label": `Answers for ${query.name}` });
  results.append(section);
  const queryFigure = h("figure", { class: "card query-image" },
    query.preview ? h("img", { src: query.preview, alt: `Query ${query.name}`, class: "thumb" }) : null,
    h("figcaption", {}, h("strong", {}, "Query"), h("br"), query.name));
  const answers = h("div", { class: "grid answers" });
  section.append(h("h2", {}, query.name), h("div", { class: "side" }, queryFigure, answers));
  try {
    const record = query.file ? { _base64: await fileToBase64(query.file) } : { _url: query.url };
    const body = { query_record: record, k, hash_type: kind, ...(geometric ? { geometric: true } : {}) };
    const data = await call("visualKNN", body, { collection });
    const label = geometric ? "geometric" : kind;
    const nbits = geometric ? GEOMETRIC.nbits : NBITS[kind];
    const threshold = geometric ? GEOMETRIC.near : NEAR[kind];
    if (!data.answer_records.length) answers.append(h("p", {}, "No answers: the collection is empty."));
    data.answer_records.forEach((stored, i) => {
      const percent = data.answer_distances[i];
      const near = percent <= threshold;
      const extra = h("p", { class: "distance" }, `${data.answer_hamming[i]} of ${nbits} bits · ${percent.toFixed(1)}%`,
        near ? h("span", { class: "badge", title: `within the documented ${label} threshold of ${threshold}%` }, "near-duplicate") : null);
      answers.append(recordCard(collection, stored, extra, near ? "card answer near" : "card answer"));
    });
  } catch (error) {
    answers.append(h("p", { class: "error-inline" }, `${query.name}: ${error.message}`));
    showError(error);
  }
}
