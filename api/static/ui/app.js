// tabserve web page: models and their schemas, one prediction, file uploads with progress,
// recent jobs. Plain DOM, no library; every server text is set with textContent.
"use strict";

(() => {
  const KEY_STORE = "tabserve.apiKey";
  const POLL_MS = 500;
  const JOBS_REFRESH_MS = 2000;
  const LIVE = new Set(["queued", "running"]);
  const $ = (id) => document.getElementById(id);
  const state = { manifest: null, jobId: null, jobStatus: null, pollTimer: 0, jobsTimer: 0,
                  announced: -1 };

  // ---- the API --------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details || [];
    }
  }

  const apiKey = () => sessionStorage.getItem(KEY_STORE) || "";
  const authHeaders = () => (apiKey() ? { Authorization: "Bearer " + apiKey() } : {});

  function errorFrom(status, body) {
    const err = body && body.error;
    if (err && typeof err === "object") {
      return new ApiError(status, err.code, err.message || "error " + status, err.details);
    }
    if (typeof err === "string") return new ApiError(status, "error", err, []);
    return new ApiError(status, "http_" + status, "the server answered HTTP " + status, []);
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Accept: "application/json" }, authHeaders(),
                                  options.headers || {});
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers }));
    } catch (e) {
      throw new ApiError(0, "network", "the server could not be reached", []);
    }
    if (response.status === 204) return null;
    const body = parseJson(await response.text());
    if (!response.ok) throw errorFrom(response.status, body);
    return body;
  }

  // ---- messages -------------------------------------------------------------------------

  function announce(text) {
    $("announcer").textContent = text;
  }

  function showError(box, err) {
    box.replaceChildren();
    const message = document.createElement("p");
    message.textContent = err.message;
    message.className = "message";
    box.append(message);
    const details = (err.details || []).slice(0, 20);
    if (details.length) {
      const list = document.createElement("ul");
      for (const d of details) {
        const item = document.createElement("li");
        const where = [d.row != null ? "row " + d.row : "", d.field || ""].filter(Boolean);
        item.textContent = (where.length ? where.join(", ") + ": " : "") + d.message;
        list.append(item);
      }
      box.append(list);
    }
    if (err.status === 401) {
      const hint = document.createElement("p");
      hint.textContent = "This server needs an API key: enter one at the top of the page.";
      box.append(hint);
      $("api-key").setAttribute("aria-invalid", "true");
    }
    box.hidden = false;
  }

  function clearError(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text != null) node.textContent = text;
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return node;
  }

  const number = (n) => (n == null ? "?" : Number(n).toLocaleString("en-US"));

  function bytes(n) {
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  // ---- the API key ------------------------------------------------------------------------

  function setupKey() {
    $("api-key").value = apiKey();
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("api-key").value.trim();
      if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
      $("api-key").removeAttribute("aria-invalid");
      $("key-state").textContent = key ? "Key in use for this tab." : "No key in use.";
      reload();
    });
    $("key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      $("api-key").value = "";
      $("key-state").textContent = "Key forgotten.";
      reload();
    });
  }

  // ---- models and their schemas -----------------------------------------------------------

  const modelRef = () => state.manifest ? state.manifest.name + ":" + state.manifest.version : "";

  async function loadModels() {
    const body = await api("models");
    const select = $("model-select");
    const previous = select.value;
    select.replaceChildren(...body.models.map((m) => el("option", m.name, { value: m.name })));
    if (!body.models.length) throw new ApiError(0, "no_models", "the server has no model", []);
    if (body.models.some((m) => m.name === previous)) select.value = previous;
    await selectModel(select.value);
  }

  async function selectModel(name) {
    const body = await api("models/" + encodeURIComponent(name));
    const versions = body.versions.slice().reverse();
    $("version-select").replaceChildren(...versions.map((m) => el(
      "option", "v" + m.version + (m.version === body.latest ? " (latest)" : ""),
      { value: String(m.version) })));
    state.versions = versions;
    showManifest(versions[0]);
  }

  function selectVersion(version) {
    showManifest(state.versions.find((m) => String(m.version) === version));
  }

  function showManifest(m) {
    state.manifest = m;
    const parts = [m.task, m.algorithm, m.features.length + " features"];
    if (m.classes) parts.push("classes " + m.classes.join(", "));
    for (const [name, value] of Object.entries(m.metrics || {})) {
      const shown = Number.isInteger(value) ? number(value) : Number(value).toFixed(3);
      parts.push(name.replace(/_/g, " ") + " " + shown);
    }
    $("model-summary").textContent = parts.filter(Boolean).join(" · ");
    $("upload-model").textContent = m.name + " v" + m.version;
    $("predict-hint").textContent = "One field per feature, in the model's order" +
      (m.features.length > 10 ? " (the list scrolls)" : "") + "; an empty field is sent as null.";
    $("feature-count").textContent = String(m.features.length);
    $("schema-body").replaceChildren(...m.features.map((f) => {
      const row = el("tr");
      row.append(el("td", f.name), el("td", f.type), el("td", valuesSeen(f)),
                 el("td", f.nullable ? "yes" : "no"));
      return row;
    }));
    buildForm(m.features);
    $("prediction").hidden = true;
    clearError($("predict-error"));
  }

  function valuesSeen(f) {
    if (f.type === "category") {
      const shown = (f.categories || []).slice(0, 12).join(", ");
      return shown + ((f.categories || []).length > 12 ? ", …" : "") +
        (f.allow_unknown ? " (others allowed)" : "");
    }
    if (f.type === "boolean") return "true, false";
    return f.min != null ? number(f.min) + " to " + number(f.max) : "";
  }

  // ---- the prediction form ----------------------------------------------------------------

  function buildForm(features) {
    $("predict-fields").replaceChildren(...features.map((f, i) => {
      const id = "feature-" + i;
      const field = el("div", null, { class: "field" });
      field.append(el("label", f.name, { for: id }));
      const input = inputFor(f, id);
      input.dataset.feature = f.name;
      input.dataset.type = f.type;
      if (!f.nullable) input.required = true;
      field.append(input);
      if (f.type === "category" && f.allow_unknown) {  // known values offered, others allowed
        const list = el("datalist", null, { id: id + "-list" });
        list.append(...(f.categories || []).map((v) => el("option", null, { value: v })));
        field.append(list);
      }
      const hint = valuesSeen(f);
      if (hint && f.type !== "category" && f.type !== "boolean") {
        field.append(el("span", hint, { class: "hint", id: id + "-hint" }));
        input.setAttribute("aria-describedby", id + "-hint");
      }
      return field;
    }));
  }

  function inputFor(f, id) {
    if (f.type === "boolean" || (f.type === "category" && !f.allow_unknown)) {
      const values = f.type === "boolean" ? ["true", "false"] : (f.categories || []);
      const select = el("select", null, { id });
      select.append(el("option", f.nullable ? "(empty)" : "choose…", { value: "" }),
                    ...values.map((v) => el("option", v, { value: v })));
      return select;
    }
    if (f.type === "category") return el("input", null, { id, type: "text", list: id + "-list" });
    return el("input", null, { id, type: "number", inputmode: "decimal",
                               step: f.type === "integer" ? "1" : "any" });
  }

  function formFeatures() {
    const features = {};
    for (const input of $("predict-fields").querySelectorAll("[data-feature]")) {
      const raw = input.value.trim();
      const type = input.dataset.type;
      let value = raw === "" ? null : raw;
      if (value !== null && (type === "number" || type === "integer")) value = Number(raw);
      if (value !== null && type === "boolean") value = raw === "true";
      features[input.dataset.feature] = value;
    }
    return features;
  }

  function fillTypical() {
    const byName = new Map(state.manifest.features.map((f) => [f.name, f]));
    for (const input of $("predict-fields").querySelectorAll("[data-feature]")) {
      const f = byName.get(input.dataset.feature);
      if (f.type === "number" || f.type === "integer") {
        const mid = f.min != null ? (f.min + f.max) / 2 : 0;
        input.value = String(f.type === "integer" ? Math.round(mid) : Number(mid.toPrecision(4)));
      } else if (f.type === "boolean") {
        input.value = "false";
      } else if (f.categories && f.categories.length) {
        input.value = f.categories[0];
      }
    }
  }

  async function predict(ev) {
    ev.preventDefault();
    clearError($("predict-error"));
    const button = ev.submitter || $("predict-form").querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const body = await api("predict?model=" + encodeURIComponent(modelRef()), {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ features: formFeatures() }),
      });
      showPrediction(body);
    } catch (err) {
      $("prediction").hidden = true;
      showError($("predict-error"), err);
    } finally {
      button.disabled = false;
    }
  }

  function showPrediction(body) {
    $("prediction-label").textContent = String(body.prediction);
    $("prediction-model").textContent = "(" + body.model.name + " v" + body.model.version + ")";
    const probabilities = body.probabilities || {};
    const rows = Object.entries(probabilities).map(([cls, p]) => {
      const row = el("tr");
      const pct = (p * 100).toFixed(1) + "%";
      const bar = el("div", null, { class: "bar" });
      const track = el("span", null, { class: "track" });
      const fill = el("span", null, { class: "fill" });
      fill.style.width = Math.max(0, Math.min(100, p * 100)) + "%";
      track.append(fill);
      bar.append(track, el("span", pct));
      const label = el("td", cls + (String(body.prediction) === cls ? " (predicted)" : ""));
      const cell = el("td");
      cell.append(bar);
      row.append(label, cell);
      return row;
    });
    $("probabilities-body").replaceChildren(...rows);
    $("probabilities").hidden = rows.length === 0;
    $("prediction").hidden = false;
  }

  // ---- uploads and the job they start -----------------------------------------------------

  function setupDropZone() {
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      zone.classList.remove("over");
      if (ev.dataTransfer.files.length) upload(ev.dataTransfer.files[0]);
    });
    $("file-input").addEventListener("change", (ev) => {
      const file = ev.target.files[0];
      ev.target.value = "";  // choosing the same file again uploads it again
      if (file) upload(file);
    });
  }

  function upload(file) {
    clearError($("upload-error"));
    stopPolling();
    $("job").hidden = true;
    const options = new URLSearchParams();
    for (const [name, value] of new FormData($("upload-form"))) {
      if (value !== "") options.append(name, value);
    }
    if (modelRef()) options.append("model", modelRef());
    // A CSV file goes as the body itself, its options in the query: the server starts
    // scoring a large one while the rest is still arriving. Other files go in a form.
    const csv = /\.csv$/i.test(file.name) || file.type === "text/csv";
    let body = file;
    if (!csv) {
      body = new FormData();
      body.append("file", file, file.name);
      for (const [name, value] of options) body.append(name, value);
    }
    const xhr = new XMLHttpRequest();
    const query = csv ? options.toString() : "";
    xhr.open("POST", query ? "jobs?" + query : "jobs");
    xhr.setRequestHeader("Accept", "application/json");
    if (csv) {
      xhr.setRequestHeader("Content-Type", "text/csv");
      xhr.setRequestHeader("Content-Disposition",
        "attachment; filename*=UTF-8''" + encodeURIComponent(file.name));
    }
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) uploadProgress(ev.loaded, ev.total);
    });
    xhr.addEventListener("load", () => {
      const body = parseJson(xhr.responseText);
      if (xhr.status === 202 && body && body.id) {
        uploadProgress(file.size, file.size);
        announce("Upload complete. Job " + body.id + " is " + body.status + ".");
        trackJob(body);
        loadJobs();
      } else {
        $("upload").hidden = true;
        const err = errorFrom(xhr.status, body);
        announce("Upload refused: " + err.message);
        showError($("upload-error"), err);
      }
    });
    xhr.addEventListener("error", () => {
      $("upload").hidden = true;
      showError($("upload-error"), new ApiError(0, "network", "the upload failed: the " +
        "connection to the server was lost", []));
    });
    $("upload-name").textContent = file.name;
    $("upload").hidden = false;
    uploadProgress(0, file.size);
    announce("Uploading " + file.name + ".");
    xhr.send(body);
  }

  function uploadProgress(loaded, total) {
    const pct = total ? Math.min(100, Math.round((loaded / total) * 100)) : 100;
    $("upload-progress").value = pct;
    $("upload-text").textContent = bytes(loaded) + " of " + bytes(total) + " (" + pct + "%)";
  }

  function trackJob(job) {
    state.jobId = job.id;
    state.jobStatus = null;
    state.announced = -1;
    showJob(job);
  }

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.jobId = null;
  }

  async function pollJob(id) {
    if (id !== state.jobId) return;
    try {
      showJob(await api("jobs/" + encodeURIComponent(id)));
    } catch (err) {
      if (id !== state.jobId) return;
      showError($("upload-error"), err);
      if (err.status === 0 || err.status >= 500) {  // try again: the server may be back
        state.pollTimer = setTimeout(() => pollJob(id), POLL_MS * 4);
      }
    }
  }

  function showJob(job) {
    if (job.id !== state.jobId) return;
    const { rows_done: done, rows_total: total } = job.progress;
    const pct = Math.floor(job.progress.fraction * 100);
    $("job").hidden = false;
    $("job-id").textContent = job.id;
    $("job-status").textContent = job.status;
    $("job-status").className = "status status-" + job.status;
    $("job-text").textContent = "· " + (total != null ? number(done) + " / " + number(total)
      : number(done)) + " rows (" + pct + "%)";
    $("job-progress").value = pct;
    const milestone = Math.floor(pct / 25);
    if (job.status !== state.jobStatus) {
      announce("Job " + job.status + ", " + pct + "%.");
      if (state.jobStatus !== null) loadJobs();
    } else if (job.status === "running" && milestone > state.announced) {
      announce("Job " + pct + "% done.");
    }
    state.announced = milestone;
    state.jobStatus = job.status;
    const links = $("job-links");
    links.replaceChildren(...fileLinks(job, true));
    if (job.status === "failed" && job.error) {
      const where = [job.error.row != null ? "row " + job.error.row : "", job.error.field || ""]
        .filter(Boolean).join(", ");
      showError($("upload-error"), new ApiError(200, job.error.code, "The job failed: " +
        job.error.message + (where ? " (" + where + ")" : ""), []));
    }
    if (LIVE.has(job.status)) {
      clearTimeout(state.pollTimer);
      state.pollTimer = setTimeout(() => pollJob(job.id), POLL_MS);
    }
  }

  // Links to a job's files. Without a key they are plain links (the browser streams the file
  // to disk); with a key the file is fetched with it and saved from memory.
  function fileLinks(job, long) {
    const out = [];
    if (job.status !== "succeeded") return out;
    const files = [["result", long ? "Download result" : "result"]];
    if (job.links && job.links.errors) files.push(["errors", long ? "Download skipped rows" : "errors"]);
    for (const [kind, text] of files) {
      const href = "jobs/" + encodeURIComponent(job.id) + "/" + kind;
      const link = el("a", text, { href, download: "", "data-file": kind });
      link.setAttribute("aria-label", text + " of job " + job.id);
      link.addEventListener("click", (ev) => {
        if (!apiKey()) return;
        ev.preventDefault();
        downloadWithKey(href, ev.currentTarget);
      });
      out.push(link);
    }
    return out;
  }

  async function downloadWithKey(href, link) {
    try {
      const response = await fetch(href, { headers: authHeaders() });
      if (!response.ok) throw errorFrom(response.status, parseJson(await response.text()));
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const save = el("a", null, { href: url, download: fileName(response, href) });
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      const box = link.closest("#jobs-body") ? $("jobs-error") : $("upload-error");
      showError(box, err instanceof ApiError ? err : new ApiError(0, "network", err.message));
    }
  }

  function fileName(response, href) {
    const header = response.headers.get("Content-Disposition") || "";
    const star = /filename\*=UTF-8''([^;]+)/i.exec(header);
    if (star) return decodeURIComponent(star[1]);
    const plain = /filename="?([^";]+)"?/i.exec(header);
    return plain ? plain[1] : href.split("/").slice(-2).join("-");
  }

  // ---- recent jobs ------------------------------------------------------------------------

  async function loadJobs() {
    clearTimeout(state.jobsTimer);
    try {
      const body = await api("jobs?limit=20");
      clearError($("jobs-error"));
      renderJobs(body.jobs);
      if (body.jobs.some((j) => LIVE.has(j.status))) {
        state.jobsTimer = setTimeout(loadJobs, JOBS_REFRESH_MS);
      }
    } catch (err) {
      showError($("jobs-error"), err);
    }
  }

  function duration(job) {
    if (!job.started_at) return "";
    const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    const s = Math.max(0, (end - Date.parse(job.started_at)) / 1000);
    return s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  }

  function renderJobs(jobs) {
    $("jobs-empty").hidden = jobs.length > 0;
    $("jobs-body").replaceChildren(...jobs.map((job) => {
      const row = el("tr", null, { "data-job": job.id });
      const cell = (label, content) => {
        const td = el("td", null, { "data-label": label });
        if (content instanceof Node) td.append(content); else td.textContent = content;
        row.append(td);
        return td;
      };
      cell("Job", el("code", job.id.slice(0, 8), { title: job.id }));
      cell("Input", job.input.name || "");
      cell("Model", job.model.name + " v" + job.model.version);
      cell("Status", el("span", job.status, { class: "status status-" + job.status,
                                              title: job.error ? job.error.message : "" }));
      const p = job.progress;
      cell("Rows", p.rows_total != null ? number(p.rows_done) + " / " + number(p.rows_total)
        : number(p.rows_done) + " (" + Math.floor(p.fraction * 100) + "%)");
      cell("Duration", duration(job));
      cell("Created", new Date(job.created_at).toLocaleString());
      const files = cell("Files", "");
      files.className = "files";
      files.append(...fileLinks(job, false));
      const action = cell("Action", "");
      if (LIVE.has(job.status)) {
        const button = el("button", "Cancel", { type: "button",
                                                "aria-label": "Cancel job " + job.id });
        button.addEventListener("click", () => cancelJob(job.id, button));
        action.append(button);
      }
      return row;
    }));
  }

  async function cancelJob(id, button) {
    button.disabled = true;
    try {
      await api("jobs/" + encodeURIComponent(id), { method: "DELETE" });
      announce("Job " + id + " cancelled.");
      if (id === state.jobId) pollJob(id);
    } catch (err) {
      showError($("jobs-error"), err);
    }
    loadJobs();
  }

  // ---- start ------------------------------------------------------------------------------

  async function reload() {
    clearError($("page-error"));
    try {
      await loadModels();
    } catch (err) {
      showError($("page-error"), err);
    }
    loadJobs();
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupKey();
    setupDropZone();
    $("model-select").addEventListener("change", (ev) => selectModel(ev.target.value)
      .catch((err) => showError($("page-error"), err)));
    $("version-select").addEventListener("change", (ev) => selectVersion(ev.target.value));
    $("predict-form").addEventListener("submit", predict);
    $("predict-example").addEventListener("click", fillTypical);
    $("jobs-refresh").addEventListener("click", loadJobs);
    reload();
  });
})();
