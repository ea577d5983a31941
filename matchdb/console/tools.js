// Compare (two images, their bmh1 and phash distances and where their bits differ) and Dedupe (remove_duplicates).

import { call, fileToBase64, NBITS, NEAR } from "./api.js";
import { dropZone, guarded, h } from "./dom.js";

const GRID = { bmh1: 31, phash: 8 };

// Bit i of a hash in the API's string form: bytes are printed most significant bit first, bit i of the hash is
// bit (i % 8) of byte i / 8 (see matchdb/hashing/value.py).
function bit(text, i) {
  return text[8 * Math.floor(i / 8) + 7 - (i % 8)] === "1";
}

function diffPicture(kind, a, b) {
  const side = GRID[kind];
  const cell = kind === "bmh1" ? 8 : 31; // both pictures 248 px wide
  const canvas = h("canvas", { width: side * cell, height: side * cell, class: "bits" });
  const context = canvas.getContext("2d");
  let differ = 0;
  for (let i = 0; i < NBITS[kind]; i += 1) {
    const x = bit(a, i);
    const y = bit(b, i);
    if (x !== y) differ += 1;
    context.fillStyle = x !== y ? "#d50000" : x ? "#8a8f98" : "#e3e6ea";
    context.fillRect((i % side) * cell, Math.floor(i / side) * cell, cell - 1, cell - 1);
  }
  const percent = (100 * differ) / NBITS[kind];
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${kind}: ${differ} of ${NBITS[kind]} bits differ (shown in red)`);
  return { canvas, differ, percent };
}

export function compareView(main) {
  const chosen = [null, null];
  const previews = [h("div", { class: "preview" }), h("div", { class: "preview" })];
  const out = h("div", { id: "compare-result", "aria-live": "polite" });
  const zones = [0, 1].map((slot) => dropZone(`compare-${slot}`, `Image ${slot === 0 ? "A" : "B"}`, false, (files) => {
    chosen[slot] = files[0];
    previews[slot].replaceChildren(h("img", { src: URL.createObjectURL(files[0]), alt: files[0].name, class: "thumb" }),
      h("p", {}, files[0].name));
    if (chosen[0] && chosen[1]) compare(chosen, out);
  }));
  main.replaceChildren(h("h1", {}, "Compare two images"),
    h("div", { class: "pair" }, h("div", {}, zones[0], previews[0]), h("div", {}, zones[1], previews[1])), out);
}

async function compare(files, out) {
  out.replaceChildren(h("p", {}, "Hashing…"));
  const records = await Promise.all(files.map(async (file, i) => ({ _id: String(i), _base64: await fileToBase64(file) })));
  const data = await guarded(() => call("visual_hash", { records, hash_type: ["bmh1", "phash"] }));
  if (!data) return out.replaceChildren();
  const failed = data.records.find((r) => r._status.code !== 200);
  if (failed) return out.replaceChildren(h("p", { class: "error-inline" }, failed._status.text));
  out.replaceChildren(h("p", { class: "hint" }, "Each square is one bit of the hash (grey: 1, light: 0 in both images); red: the bit differs."),
    h("div", { class: "bitmaps" }, ...["bmh1", "phash"].map((kind) => {
    const { canvas, differ, percent } = diffPicture(kind, data.records[0][kind], data.records[1][kind]);
    const verdict = percent <= NEAR[kind] ? "near-duplicates" : "different images";
    return h("figure", { class: "card wide" }, canvas, h("figcaption", {}, h("strong", {}, kind),
      `: ${differ} of ${NBITS[kind]} bits differ · ${percent.toFixed(1)}% · ${verdict} (threshold ${NEAR[kind]}%)`));
  })));
}

export function dedupeView(main, state) {
  const kind = h("select", { id: "dedupe-hash" }, h("option", { value: "bmh1" }, "bmh1"), h("option", { value: "phash" }, "phash"));
  const range = h("input", { id: "dedupe-range", type: "number", min: 0, max: 100, step: 0.1, value: NEAR.bmh1 });
  kind.addEventListener("change", () => { range.value = NEAR[kind.value]; });
  const out = h("div", { id: "dedupe-result", "aria-live": "polite" });
  const limit = state.maxRecords;
  const zone = dropZone("dedupe-files", "Images to deduplicate", true, async (files) => {
    if (files.length > limit) {
      out.replaceChildren(h("p", { class: "error-inline" }, `At most ${limit} images per run (the server's MATCHDB_MAX_RECORDS); ${files.length} were given.`));
      return;
    }
    out.replaceChildren(h("p", {}, `Hashing ${files.length} images…`));
    const urls = new Map(files.map((file, i) => [String(i), URL.createObjectURL(file)]));
    const records = await Promise.all(files.map(async (file, i) => ({ _id: String(i), name: file.name, _base64: await fileToBase64(file) })));
    const data = await guarded(() => call("remove_duplicates", { records, hash_type: kind.value, range: Number(range.value) }));
    if (!data) return out.replaceChildren();
    const figure = (r, label) => h("figure", { class: "card" },
      h("img", { src: urls.get(r._id), alt: r.name, class: "thumb" }), h("figcaption", {}, label, h("br"), r.name));
    const groups = data.records.filter((r) => r.removed_records);
    const alone = data.records.filter((r) => !r.removed_records && r._status.code === 200).length;
    const failed = data.records.filter((r) => r._status.code !== 200);
    out.replaceChildren(h("p", {}, `${groups.length} group${groups.length === 1 ? "" : "s"} of duplicates, ${alone} image${alone === 1 ? "" : "s"} without duplicate.`),
      ...groups.map((g, n) => h("section", { class: "group", "aria-label": `Group ${n + 1}` }, h("h2", {}, `Group ${n + 1}`),
        h("div", { class: "grid" }, figure(g, "kept"), g.removed_records.map((r) => figure(r, "duplicate"))))),
      ...failed.map((r) => h("p", { class: "error-inline" }, `${r.name}: ${r._status.text}`)));
  });
  main.replaceChildren(h("h1", {}, "Dedupe a set of images"),
    h("div", { class: "row" }, h("label", { for: "dedupe-hash" }, "Hash"), kind, h("label", { for: "dedupe-range" }, "Range (%)"), range),
    zone, out);
}
