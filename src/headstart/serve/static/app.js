// The page of `headstart serve`: drop photos, see each one's top 5 and its Grad-CAM overlay. Plain JS, no build
// step, nothing from the network but this server. Every failure ends up as words on the page, never a blank one.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { models: [], model: null, key: sessionStorage.getItem("headstart-key") || "", active: 0, queue: [] };
  const MAX_PARALLEL = 4;

  function showBanner(text, askKey) {
    $("banner-text").textContent = text;
    $("key-form").hidden = !askKey;
    $("banner").hidden = false;
    if (askKey) $("key").focus();
  }
  $("banner-close").addEventListener("click", () => { $("banner").hidden = true; });
  window.addEventListener("error", (e) => showBanner("Something went wrong in the page: " + (e.message || e)));
  window.addEventListener("unhandledrejection", (e) => showBanner("Something went wrong: " + (e.reason && e.reason.message || e.reason)));

  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = "status " + kind;
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (state.key) h["X-API-Key"] = state.key;
    return h;
  }

  // The server's JSON error ({"detail": ..., "code": ...}) as one sentence.
  async function problem(response) {
    let text = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body && body.detail) text = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON: keep the status line */ }
    if (response.status === 401) showBanner(text, true);
    return text;
  }

  async function call(path, options) {
    try {
      return await fetch(path, Object.assign({}, options, { headers: headers(options && options.headers) }));
    } catch (err) {
      throw new Error("could not reach the server (" + err.message + ")");
    }
  }

  // ---------------------------------------------------------------------------------------------- model card
  const format = window.headstartFormat;  // static/format.js

  function showCard(m) {
    $("card-name").textContent = m.name;
    $("card-accuracy").textContent = m.accuracy == null ? "not recorded" : format.accuracy(m.accuracy) + " (validation)";
    $("card-backbone").textContent = m.backbone.name + " (" + m.backbone.num_features + "-d features)";
    $("card-method").textContent = m.method || "–";
    const p = m.preprocessing;
    $("card-input").textContent = p.input_size.slice(1).join("×") + ", " + p.interpolation +
      (p.flip_average ? ", mirror-averaged" : "") + "; " + m.inference.engine + " " + m.inference.precision;
    $("card-created").textContent = m.created ? m.created.slice(0, 10) : "–";
    $("card-n-classes").textContent = m.n_classes;
    const list = $("card-classes");
    list.replaceChildren(...m.classes.map((c) => { const li = document.createElement("li"); li.textContent = c; return li; }));
  }

  async function loadModels() {
    const r = await call("/v1/models");
    if (!r.ok) throw new Error(await problem(r));
    state.models = (await r.json()).models;
    const select = $("model");
    select.replaceChildren(...state.models.map((m) => { const o = document.createElement("option"); o.value = o.textContent = m.name; return o; }));
    $("model-choice").hidden = state.models.length < 2;
    state.model = state.models[0];
    showCard(state.model);
  }
  $("model").addEventListener("change", (e) => {
    state.model = state.models.find((m) => m.name === e.target.value);
    showCard(state.model);
  });

  async function waitUntilReady() {
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await fetch("/readyz");
        const body = await r.json();
        if (r.ok) return;
        if (body.status === "failed") throw new Error(body.error || "the server could not load its models");
        setStatus("loading models…", "loading");
      } catch (err) {
        if (err.message && !/fetch|network/i.test(err.message)) throw err;
        setStatus("server unreachable, retrying…", "failed");
      }
      await new Promise((ok) => setTimeout(ok, Math.min(500 + 250 * attempt, 3000)));
    }
  }

  async function start() {
    try {
      await waitUntilReady();
      await loadModels();
      setStatus("ready", "ready");
      pump();
    } catch (err) {
      setStatus("not available", "failed");
      showBanner("The models could not be loaded: " + err.message, /API key/i.test(err.message));
    }
  }

  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("key").value.trim();
    sessionStorage.setItem("headstart-key", state.key);
    $("banner").hidden = true;
    start();
  });

  // -------------------------------------------------------------------------------------------- one photo
  function addPhoto(file, before) {
    const node = $("photo-template").content.firstElementChild.cloneNode(true);
    node.querySelector(".name").textContent = file.name;
    node.querySelector(".name").title = file.name;
    const thumb = node.querySelector(".thumb");
    thumb.src = URL.createObjectURL(file);
    thumb.alt = file.name;
    thumb.addEventListener("error", () => { thumb.hidden = true; }, { once: true });
    $("results").insertBefore(node, before);  // a new batch goes on top, in the order it was chosen
    const item = { file, node, model: state.model ? state.model.name : "" };
    node.querySelector(".cam").addEventListener("change", (e) => toggleCam(item, e.target.checked));
    return item;
  }

  function fail(item, message) {
    item.node.classList.remove("pending", "explaining");
    item.node.classList.add("error");
    const p = item.node.querySelector(".error");
    p.textContent = message;
    p.hidden = false;
  }

  function showPredictions(item, predictions) {
    const bars = item.node.querySelector(".bars");
    bars.replaceChildren(...predictions.map((p) => {
      const li = document.createElement("li");
      const label = document.createElement("span"); label.className = "label"; label.textContent = p.label; label.title = p.label;
      const track = document.createElement("span"); track.className = "track";
      const fill = document.createElement("span"); fill.className = "fill"; fill.style.width = (100 * p.probability).toFixed(1) + "%";
      track.append(fill);
      const value = document.createElement("span"); value.className = "p"; value.textContent = format.probability(p.probability);
      li.append(label, track, value);
      return li;
    }));
    item.node.classList.remove("pending");
    item.node.classList.add("done");
    item.node.querySelector(".toggle").hidden = false;
  }

  async function predict(item) {
    const form = new FormData();
    form.append("file", item.file, item.file.name);
    const query = new URLSearchParams({ top_k: "5" });
    if (item.model) query.set("model", item.model);
    try {
      const r = await call("/v1/predict?" + query, { method: "POST", body: form });
      if (!r.ok) return fail(item, await problem(r));
      const body = await r.json();
      showPredictions(item, body.results[0].predictions);
    } catch (err) {
      fail(item, err.message);
    }
  }

  async function toggleCam(item, on) {
    const thumb = item.node.querySelector(".thumb");
    const overlay = item.node.querySelector(".overlay");
    const note = item.node.querySelector(".cam-note");
    if (!on) { overlay.hidden = true; thumb.hidden = false; return; }
    if (!item.overlay) {
      item.node.classList.add("explaining");
      const form = new FormData();
      form.append("file", item.file, item.file.name);
      const query = new URLSearchParams();
      if (item.model) query.set("model", item.model);
      try {
        const r = await call("/v1/explain?" + query, { method: "POST", body: form });
        if (!r.ok) { item.node.querySelector(".cam").checked = false; return fail(item, await problem(r)); }
        item.overlay = URL.createObjectURL(await r.blob());
        const label = decodeURIComponent(r.headers.get("X-Explained-Label") || "");
        note.textContent = label ? "for " + label : "";
        overlay.src = item.overlay;
      } catch (err) {
        item.node.querySelector(".cam").checked = false;
        return fail(item, err.message);
      } finally {
        item.node.classList.remove("explaining");
      }
    }
    if (item.node.querySelector(".cam").checked) { overlay.hidden = false; thumb.hidden = true; }
  }

  // ------------------------------------------------------------------------------------- many photos at once
  function pump() {
    while (state.model && state.active < MAX_PARALLEL && state.queue.length) {
      const item = state.queue.shift();
      if (!item.model) item.model = state.model.name;
      state.active++;
      predict(item).finally(() => { state.active--; pump(); });
    }
  }

  function addFiles(files) {
    const list = Array.from(files || []);
    if (!list.length) return;
    if (!state.model) showBanner("The models are not loaded yet; the photos will be sent once they are.");
    const before = $("results").firstChild;
    for (const file of list) state.queue.push(addPhoto(file, before));
    pump();
  }

  $("file").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  document.addEventListener("dragover", (e) => e.preventDefault());  // a photo dropped beside the zone must not replace the page
  document.addEventListener("drop", (e) => { e.preventDefault(); addFiles(e.dataTransfer && e.dataTransfer.files); });  // (the zone's drop bubbles here)

  start();
})();
