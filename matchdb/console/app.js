// The console's entry: sign-in (skipped in open mode), then the views, chosen by the URL's #fragment.

import { call, forgetThumbnails, serverInfo, token } from "./api.js";
import { collectionView, listView } from "./collections.js";
import { clearError, guarded, h, showError } from "./dom.js";
import { searchView } from "./search.js";
import { compareView, dedupeView } from "./tools.js";

const state = { access: null, collections: null, collection: null, maxRecords: 100, onPaste: null };
const main = document.getElementById("main");

async function start() {
  const info = await guarded(serverInfo);
  if (!info) return;
  state.maxRecords = info.max_records;
  if (info.open || token.get()) {
    const ping = await guarded(() => call("ping", {}, { method: "GET" }));
    if (ping) return signedIn(ping.access);
    token.clear();
  }
  signInView();
}

function signInView() {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").replaceChildren();
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h("form", { id: "sign-in", class: "stack" },
    h("label", { for: "token" }, "API token"), input,
    h("p", { class: "hint" }, "Kept in this tab only (session storage) until you sign out or close it. ",
      "Ask your matchdb operator for one (matchdb token create)."),
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    token.set(input.value.trim());
    const ping = await guarded(() => call("ping", {}, { method: "GET" }));
    if (ping) signedIn(ping.access);
    else token.clear();
  });
  main.replaceChildren(h("h1", {}, "Sign in"), form);
  input.focus();
}

function signedIn(access) {
  state.access = access;
  document.getElementById("nav").hidden = false;
  const who = [h("span", {}, `workspace ${access.workspace}`, access.read_only ? " · read-only" : "", access.open ? " · open mode" : "")];
  if (!access.open) {
    who.push(h("button", { type: "button", id: "sign-out", onclick: () => {
      token.clear();
      forgetThumbnails();
      Object.assign(state, { access: null, collections: null, collection: null });
      location.hash = "";
      signInView();
    } }, "Sign out"));
  }
  document.getElementById("who").replaceChildren(...who);
  document.body.classList.toggle("read-only", access.read_only);
  route();
}

async function route() {
  if (!state.access) return;
  clearError();
  state.onPaste = null;
  const [view, arg] = location.hash.replace(/^#/, "").split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    link.toggleAttribute("aria-current", link.getAttribute("href") === `#${view || "collections"}`);
  }
  try {
    if (view === "collection" && arg) await collectionView(main, state, decodeURIComponent(arg));
    else if (view === "search") await searchView(main, state);
    else if (view === "compare") compareView(main);
    else if (view === "dedupe") dedupeView(main, state);
    else await listView(main, state);
  } catch (error) {
    showError(error);
  }
}

window.addEventListener("hashchange", () => {
  state.collections = null; // counts change: list them again when a view needs them
  route();
});
document.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
  if (files.length && state.onPaste) {
    event.preventDefault();
    state.onPaste(files);
  }
});
start();
