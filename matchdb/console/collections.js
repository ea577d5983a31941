// Collections: the list (with record counts), create, delete; a collection's records as a thumbnail grid.

import { call, forgetThumbnails, thumbnail } from "./api.js";
import { attributeList, confirmDialog, guarded, h, lazyImage, showError } from "./dom.js";

const PAGE_SIZE = 24;

export async function listView(main, state) {
  const data = await guarded(() => call("collections", {}, { method: "GET" }));
  if (!data) {
    main.replaceChildren(h("h1", {}, "Collections")); // the error above says why there is no list
    return;
  }
  state.collections = data.collections;
  const rows = state.collections.map((c) =>
    h("tr", { dataset: { name: c.name } },
      h("td", {}, h("a", { href: `#collection/${encodeURIComponent(c.id)}` }, c.name)),
      h("td", { class: "num" }, c.record_count.toLocaleString("en")),
      h("td", {}, c.index.state),
      h("td", {}, h("code", {}, c.id)),
      h("td", {}, state.access.read_only ? null : h("button", {
        class: "danger", type: "button", "aria-label": `Delete collection ${c.name}`,
        onclick: () => deleteCollection(c, state),
      }, "Delete"))));
  const table = rows.length
    ? h("table", { class: "list" },
      h("caption", {}, `${rows.length} collection${rows.length === 1 ? "" : "s"} in workspace ${state.access.workspace}`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Records"),
        h("th", { scope: "col" }, "Index"), h("th", { scope: "col" }, "Id"), h("th", { scope: "col" }, h("span", { class: "sr" }, "Actions")))),
      h("tbody", {}, rows))
    : h("p", {}, "No collections yet.");
  main.replaceChildren(h("h1", {}, "Collections"), table, state.access.read_only ? readOnlyNote() : createForm(state));
}

function readOnlyNote() {
  return h("p", { class: "hint" }, "This token is read-only: browsing and searching only.");
}

function createForm(state) {
  const input = h("input", { id: "new-collection", name: "name", required: true, maxlength: 200, autocomplete: "off" });
  const form = h("form", { class: "row", id: "create-form" },
    h("label", { for: "new-collection" }, "New collection name"), input, h("button", { type: "submit" }, "Create"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const created = await guarded(() => call("collections", { name: input.value.trim() }));
    if (created) await listView(document.getElementById("main"), state);
  });
  return form;
}

async function deleteCollection(collection, state) {
  const count = collection.record_count.toLocaleString("en");
  const ok = await confirmDialog(`Delete the collection "${collection.name}" and its ${count} records? This cannot be undone.`,
    `Delete ${collection.name}`);
  if (!ok) return;
  const done = await guarded(() => call(`collections/${encodeURIComponent(collection.id)}`, {}, { method: "DELETE" }));
  if (done) {
    forgetThumbnails(collection.id);
    if (state.collection === collection.id) state.collection = null;
    await listView(document.getElementById("main"), state);
  }
}

// One record as a card: its thumbnail (stored, else its _url, else a placeholder), _id and attributes.
export function recordCard(collection, record, extra = null, className = "card") {
  const source = thumbnail(collection, record._id).then((url) => url || safeUrl(record._url));
  return h("figure", { class: className, dataset: { id: record._id } },
    lazyImage(record._id, source),
    h("figcaption", {}, h("code", { class: "id" }, record._id), extra, attributeList(record)));
}

function safeUrl(value) {
  return typeof value === "string" && /^https?:\/\//i.test(value) ? value : null;
}

export async function collectionView(main, state, id, page = 1, filterText = "") {
  state.collection = id;
  if (!state.collections) {
    const listed = await guarded(() => call("collections", {}, { method: "GET" }));
    state.collections = listed ? listed.collections : [];
  }
  const known = state.collections.find((c) => c.id === id);
  const title = known ? known.name : id;
  const filterInput = h("input", { id: "filter", value: filterText, placeholder: '{"brand": "acme"}', autocomplete: "off" });
  const grid = h("div", { class: "grid", id: "records", "aria-live": "polite" });
  const pager = h("div", { class: "row pager" });
  const form = h("form", { class: "row", id: "filter-form" },
    h("label", { for: "filter" }, "Filter (JSON, as in the API)"), filterInput, h("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    collectionView(main, state, id, 1, filterInput.value.trim());
  });
  main.replaceChildren(h("h1", {}, `Collection ${title}`),
    h("p", {}, h("a", { href: "#search" }, "Search this collection by image"), " · ", h("a", { href: "#collections" }, "All collections")),
    form, pager, grid);
  let filter;
  if (filterText) {
    try {
      filter = JSON.parse(filterText);
    } catch (error) {
      showError(`The filter is not valid JSON: ${error.message}`);
      return;
    }
  }
  const body = filter === undefined ? {} : { filter };
  const data = await guarded(() => call(`allRecords?size=${PAGE_SIZE}&page=${page}`, body, { collection: id }));
  if (!data) return;
  const pages = Math.max(1, Math.ceil(data.answer_count / PAGE_SIZE));
  pager.replaceChildren(
    h("button", { type: "button", disabled: page <= 1, onclick: () => collectionView(main, state, id, page - 1, filterText) }, "Previous"),
    h("span", {}, `Page ${page} of ${pages} · ${data.answer_count.toLocaleString("en")} records`),
    h("button", { type: "button", disabled: !data.next, onclick: () => collectionView(main, state, id, page + 1, filterText) }, "Next"));
  grid.replaceChildren(...data.answer_records.map((record) => recordCard(id, record, state.access.read_only ? null :
    h("div", { class: "actions" }, h("button", { type: "button", class: "danger small", "aria-label": `Delete record ${record._id}`,
      onclick: () => deleteRecord(main, state, id, record._id, page, filterText) }, "Delete")))));
  if (!data.answer_records.length) grid.append(h("p", {}, filter ? "No record matches this filter." : "This collection is empty."));
}

async function deleteRecord(main, state, id, recordId, page, filterText) {
  if (!(await confirmDialog(`Delete the record "${recordId}"? This cannot be undone.`, `Delete ${recordId}`))) return;
  const done = await guarded(() => call("delete", { records: [{ _id: recordId }] }, { collection: id }));
  if (done) await collectionView(main, state, id, page, filterText);
}
