// Upload page of the chest CT classifier: plain JavaScript, no build step, no framework.
// Talks to GET /health and POST /predict (multipart field "file", ?explain=1 for Grad-CAM).
(() => {
  "use strict";

  const byId = (id) => document.getElementById(id);

  const config = {
    healthUrl: document.body.dataset.healthUrl || "/health",
    predictUrl: document.body.dataset.predictUrl || "/predict",
    maxUploadMb: Number.parseFloat(document.body.dataset.maxUploadMb) || 10,
    labels: readLabels(),
  };

  const ui = {
    modelStatus: byId("model-status"),
    error: byId("error-message"),
    dropZone: byId("drop-zone"),
    fileInput: byId("file-input"),
    imageFrame: byId("image-frame"),
    preview: byId("preview-image"),
    previewUnavailable: byId("preview-unavailable"),
    heatmapImage: byId("heatmap-image"),
    frameCaption: byId("frame-caption"),
    classifyButton: byId("classify-button"),
    spinner: byId("spinner"),
    spinnerText: byId("spinner-text"),
    heatmapToggle: byId("heatmap-toggle"),
    placeholder: byId("result-placeholder"),
    result: byId("result"),
    resultLabel: byId("result-label"),
    resultConfidence: byId("result-confidence"),
    uncertain: byId("result-uncertain"),
    unchecked: byId("result-unchecked"),
    answer: byId("result-answer"),
    refused: byId("result-refused"),
    refusedReason: byId("result-refused-reason"),
    detailsToggle: byId("details-toggle"),
    probabilities: byId("result-probabilities"),
    bars: byId("probability-bars"),
    modelInfo: byId("model-info"),
    modelMeasured: byId("model-measured"),
    frames: byId("result-frames"),
  };

  const state = {
    uploadEnabled: true, // false once /health says there is no model
    file: null,
    previewUrl: null,
    result: null,
    heatmap: null, // base64 PNG for the current file, once computed
    slicePreview: null, // base64 PNG of a DICOM slice as the model saw it (browsers show no DICOM)
    busy: false,
    serial: 0, // answers to older requests are ignored
  };

  function readLabels() {
    try {
      const parsed = JSON.parse(byId("labels-data").textContent);
      return Array.isArray(parsed) ? parsed : [];
    } catch {
      return [];
    }
  }

  function show(element, visible) {
    element.classList.toggle("d-none", !visible);
  }

  function displayName(label) {
    const known = config.labels.find((item) => item.label === label);
    return known ? known.display_name : label;
  }

  function formatMegabytes(bytes) {
    const mb = bytes / (1024 * 1024);
    return `${mb < 10 ? mb.toFixed(1) : Math.round(mb)} MB`;
  }

  function formatPercent(probability) {
    const value = Number(probability);
    return `${(Number.isFinite(value) ? value * 100 : 0).toFixed(1)}%`;
  }

  // ---- errors and busy state -------------------------------------------------------------

  function showError(message) {
    ui.error.textContent = message;
    show(ui.error, true);
    const box = ui.error.getBoundingClientRect();
    if (box.top < 0 || box.bottom > window.innerHeight) ui.error.scrollIntoView({ block: "nearest" });
  }

  function clearError() {
    ui.error.textContent = "";
    show(ui.error, false);
  }

  function setBusy(busy, text) {
    state.busy = busy;
    if (text) ui.spinnerText.textContent = text;
    ui.spinner.classList.toggle("d-flex", busy);
    show(ui.spinner, busy);
    ui.result.setAttribute("aria-busy", String(busy));
    updateControls();
  }

  function updateControls() {
    ui.fileInput.disabled = !state.uploadEnabled;
    ui.dropZone.classList.toggle("disabled", !state.uploadEnabled);
    ui.dropZone.setAttribute("aria-disabled", String(!state.uploadEnabled));
    ui.classifyButton.disabled = !state.uploadEnabled || !state.file || state.busy;
    ui.heatmapToggle.disabled = !state.uploadEnabled;
  }

  // ---- talking to the server -------------------------------------------------------------

  async function readJson(response) {
    try {
      const text = await response.text();
      return text ? JSON.parse(text) : null;
    } catch {
      return null; // not JSON (a proxy's HTML error page, a cut connection...)
    }
  }

  function errorMessage(response, data) {
    if (data && typeof data.error === "string" && data.error.trim()) return data.error;
    const status = response.status;
    if (status === 413) {
      return `The file is too large for the server. The limit is ${config.maxUploadMb} MB.`;
    }
    if (status === 503) return "The classifier is not available right now. Please try again later.";
    if (status >= 500) {
      return `The server ran into a problem (HTTP ${status}). Please try again in a moment.`;
    }
    return `The server could not handle this request (HTTP ${status}).`;
  }

  async function postImage(file, explain) {
    const form = new FormData();
    form.append("file", file, file.name);
    const url = explain ? `${config.predictUrl}?explain=1` : config.predictUrl;
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        body: form,
        headers: { Accept: "application/json" },
      });
    } catch {
      throw new Error("Could not reach the server. Check your connection and try again.");
    }
    const data = await readJson(response);
    if (!response.ok) {
      const error = new Error(errorMessage(response, data));
      error.status = response.status;
      throw error;
    }
    const refused = data && data.status === "out_of_distribution";
    if (!data || typeof data !== "object" || (!refused && typeof data.label !== "string")) {
      throw new Error(
        `The server sent an answer this page does not understand (HTTP ${response.status}).`,
      );
    }
    return data;
  }

  async function checkHealth() {
    let response;
    try {
      response = await fetch(config.healthUrl, {
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
    } catch {
      renderModelProblem(
        "The server cannot be reached.",
        "Check your connection and reload the page.",
      );
      return;
    }
    const data = await readJson(response);
    if (response.ok && data && data.model_loaded !== false) {
      state.uploadEnabled = true;
      renderModelReady(data.model);
    } else if (data && (data.status === "no_model" || data.model_loaded === false)) {
      state.uploadEnabled = false;
      renderModelProblem(
        "No model is loaded, so images cannot be classified yet.",
        data.message || "Train a model first, then restart the server.",
      );
    } else {
      renderModelProblem(
        `The server is not ready (HTTP ${response.status}).`,
        "Reload the page in a moment.",
      );
    }
    updateControls();
  }

  // ---- rendering -------------------------------------------------------------------------

  function modelDescription(model) {
    if (!model || typeof model !== "object") return "";
    const parts = [];
    if (model.name) parts.push(model.name);
    if (model.version !== undefined && model.version !== null && model.version !== "") {
      parts.push(`version ${model.version}`);
    }
    if (model.weights) parts.push(`weights: ${model.weights}`);
    if (model.source) parts.push(`source: ${model.source}`);
    if (model.image_size) parts.push(`input ${model.image_size} px`);
    if (model.precision && model.precision.served) parts.push(`precision ${model.precision.served}`);
    return parts.join(" · ");
  }

  // What the model scored on held-out images, in words: every answer is read beside it.
  function measuredDescription(model) {
    const measured = model && model.measured;
    if (!measured || typeof measured !== "object") {
      return "This model has no evaluation on held-out images: how often it is right is unknown.";
    }
    const images = measured.images ? `${measured.images} ` : "";
    const recall = Object.entries(measured.recall || {})
      .map(([label, value]) => `${displayName(label).toLowerCase()} ${formatPercent(value)}`)
      .join(", ");
    return (
      `Measured on ${images}held-out ${measured.split} images: right ` +
      `${formatPercent(measured.accuracy)} of the time (macro-F1 ` +
      `${Number(measured.macro_f1).toFixed(2)}). Share of each type it recognises: ${recall}.`
    );
  }

  function renderModelReady(model) {
    ui.modelStatus.replaceChildren();
    const badge = document.createElement("span");
    badge.className = "badge text-bg-success me-2";
    badge.textContent = "Model ready";
    const text = document.createElement("span");
    text.className = "small text-body-secondary";
    text.textContent = modelDescription(model);
    const measured = document.createElement("div");
    measured.id = "model-measured-status";
    measured.className = "small mt-1";
    measured.textContent = measuredDescription(model);
    ui.modelStatus.append(badge, text, measured);
  }

  function renderModelProblem(title, details) {
    ui.modelStatus.replaceChildren();
    const alert = document.createElement("div");
    alert.className = "alert alert-danger mb-0";
    const heading = document.createElement("strong");
    heading.className = "d-block mb-1";
    heading.textContent = title;
    const body = document.createElement("div");
    body.className = "model-status-message";
    body.textContent = details;
    alert.append(heading, body);
    ui.modelStatus.append(alert);
  }

  function resetResult() {
    state.result = null;
    state.heatmap = null;
    state.slicePreview = null;
    show(ui.result, false);
    show(ui.placeholder, true);
    ui.bars.replaceChildren();
    renderImageFrame();
  }

  function classesOf(data) {
    if (Array.isArray(data.classes) && data.classes.length) return data.classes;
    const probabilities = data.probabilities || {};
    const labels = config.labels.length
      ? config.labels.map((item) => item.label)
      : Object.keys(probabilities);
    return labels.map((label) => ({
      label,
      display_name: displayName(label),
      probability: probabilities[label] ?? 0,
    }));
  }

  function probabilityRow(item, predicted) {
    const row = document.createElement("div");
    row.className = `probability-row${predicted ? " predicted" : ""}`;
    row.dataset.label = item.label;

    const header = document.createElement("div");
    header.className = "d-flex justify-content-between align-items-baseline gap-2 small mb-1";
    const name = document.createElement("span");
    name.className = "probability-name";
    name.id = `probability-name-${item.label}`;
    name.textContent = item.display_name || displayName(item.label);
    if (predicted) {
      const badge = document.createElement("span");
      badge.className = "badge text-bg-primary ms-2";
      badge.textContent = "predicted";
      name.append(badge);
    }
    const value = document.createElement("span");
    value.className = "probability-value";
    value.textContent = formatPercent(item.probability);
    header.append(name, value);

    const percent = Math.max(0, Math.min(100, Number(item.probability) * 100 || 0));
    const progress = document.createElement("div");
    progress.className = "progress";
    progress.setAttribute("role", "progressbar");
    progress.setAttribute("aria-labelledby", name.id);
    progress.setAttribute("aria-valuemin", "0");
    progress.setAttribute("aria-valuemax", "100");
    progress.setAttribute("aria-valuenow", percent.toFixed(1));
    progress.setAttribute("aria-valuetext", value.textContent);
    const bar = document.createElement("div");
    bar.className = `progress-bar ${predicted ? "bg-primary" : "bg-secondary bg-opacity-50"}`;
    bar.style.width = `${percent}%`;
    progress.append(bar);

    row.append(header, progress);
    return row;
  }

  // An image unlike the training slices gets no type: a plain refusal, the model's raw
  // output only behind the details switch.
  function renderResult(data) {
    const refused = data.status === "out_of_distribution";
    const ood = data.ood && typeof data.ood === "object" ? data.ood : {};
    show(ui.answer, !refused);
    show(ui.refused, refused);
    if (refused) {
      ui.resultLabel.textContent = "";
      delete ui.resultLabel.dataset.label;
      ui.resultConfidence.textContent = "";
      ui.refusedReason.textContent = ood.reason || "it is unlike the training images.";
      ui.detailsToggle.checked = false;
    } else {
      ui.resultLabel.textContent = data.display_name || displayName(data.label);
      ui.resultLabel.dataset.label = data.label;
      const confidence = data.confidence ?? data.probabilities?.[data.label];
      ui.resultConfidence.textContent =
        confidence === undefined ? "" : `Model confidence: ${formatPercent(confidence)}`;
    }
    show(ui.uncertain, !refused && data.status === "uncertain");
    // No detector for this model: say that the image was not checked.
    const unchecked = !refused && ood.score === null && typeof ood.reason === "string";
    ui.unchecked.textContent = unchecked ? `Out-of-distribution check ${ood.reason}.` : "";
    show(ui.unchecked, unchecked);
    show(ui.probabilities, !refused);
    const frames = Array.isArray(data.frames) ? data.frames.length : 0;
    ui.frames.textContent = frames
      ? `This DICOM file has ${frames} frames: the answer above is for the first. The JSON ` +
        "API answers every frame; batch inference also summarises whole series."
      : "";
    show(ui.frames, frames > 0);
    ui.bars.replaceChildren(
      ...classesOf(data).map((item) => probabilityRow(item, !refused && item.label === data.label)),
    );
    ui.modelInfo.textContent = modelDescription(data.model)
      ? `Model: ${modelDescription(data.model)}`
      : "";
    ui.modelMeasured.textContent = measuredDescription(data.model);
    show(ui.placeholder, false);
    show(ui.result, true);
    // On a narrow screen the result card sits below the upload card: bring it into view.
    const top = ui.result.getBoundingClientRect().top;
    if (top > window.innerHeight - 80) ui.result.scrollIntoView({ block: "start" });
  }

  function renderImageFrame() {
    const sliceSrc = state.slicePreview ? `data:image/png;base64,${state.slicePreview}` : null;
    // a DICOM file: the browser cannot show it, the server sends the slice it classified
    if (sliceSrc && ui.preview.getAttribute("src") !== sliceSrc) {
      delete ui.preview.dataset.failed;
      ui.preview.src = sliceSrc;
    }
    const previewOk = Boolean(state.previewUrl || sliceSrc) && !ui.preview.dataset.failed;
    const heatmapOn = ui.heatmapToggle.checked && Boolean(state.heatmap);
    if (heatmapOn) {
      const src = `data:image/png;base64,${state.heatmap}`;
      if (ui.heatmapImage.getAttribute("src") !== src) ui.heatmapImage.src = src;
    }
    show(ui.heatmapImage, heatmapOn);
    show(ui.preview, previewOk && !heatmapOn);
    show(ui.imageFrame, previewOk || heatmapOn);
    show(ui.previewUnavailable, Boolean(state.file) && !previewOk && !heatmapOn);
    ui.frameCaption.textContent = heatmapOn
      ? "Grad-CAM overlay"
      : sliceSrc
        ? "DICOM slice, as the model saw it"
        : "Your image";
  }

  // ---- actions ---------------------------------------------------------------------------

  function chooseFile(file) {
    clearError();
    resetResult();
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = null;
    state.file = null;
    delete ui.preview.dataset.failed;
    ui.preview.removeAttribute("src");

    if (file) {
      const limit = config.maxUploadMb * 1024 * 1024;
      if (file.size === 0) {
        showError(`"${file.name}" is empty. Please choose an image file.`);
      } else if (file.size > limit) {
        showError(
          `"${file.name}" is ${formatMegabytes(file.size)}, but the largest image you can ` +
            `upload is ${config.maxUploadMb} MB. Please choose a smaller file.`,
        );
      } else {
        state.file = file;
        state.previewUrl = URL.createObjectURL(file);
        ui.preview.src = state.previewUrl;
      }
    }
    renderImageFrame();
    updateControls();
  }

  async function classify({ explain = ui.heatmapToggle.checked, text } = {}) {
    if (!state.file || !state.uploadEnabled) return;
    const serial = ++state.serial;
    const file = state.file;
    clearError();
    setBusy(true, text || (explain ? "Classifying and computing the heatmap…" : "Classifying…"));
    try {
      const data = await postImage(file, explain);
      if (serial !== state.serial) return;
      state.result = data;
      if (data.heatmap_png) state.heatmap = data.heatmap_png;
      if (data.preview_png) state.slicePreview = data.preview_png;
      renderResult(data);
      if (explain && !data.heatmap_png) {
        showError("The server did not send a heatmap for this image.");
      }
      renderImageFrame();
      // the switch was turned on while this (heatmap-less) answer was on its way
      if (!explain && ui.heatmapToggle.checked && !state.heatmap) onHeatmapToggle();
    } catch (error) {
      if (serial !== state.serial) return;
      showError(error.message);
      if (error.status === 503) checkHealth();
    } finally {
      if (serial === state.serial) setBusy(false);
    }
  }

  function onHeatmapToggle() {
    if (ui.heatmapToggle.checked && !state.heatmap && state.result && state.file) {
      classify({ explain: true, text: "Computing the heatmap…" });
    }
    renderImageFrame();
  }

  // ---- wiring ----------------------------------------------------------------------------

  ui.preview.addEventListener("error", () => {
    if (!ui.preview.getAttribute("src")) return;
    ui.preview.dataset.failed = "1";
    renderImageFrame();
  });
  ui.preview.addEventListener("load", renderImageFrame);

  ui.fileInput.addEventListener("change", () => chooseFile(ui.fileInput.files[0] || null));
  ui.classifyButton.addEventListener("click", () => classify());
  ui.heatmapToggle.addEventListener("change", onHeatmapToggle);
  ui.detailsToggle.addEventListener("change", () => show(ui.probabilities, ui.detailsToggle.checked));

  ["dragenter", "dragover"].forEach((type) => {
    ui.dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      if (!state.uploadEnabled) {
        event.dataTransfer.dropEffect = "none";
        return;
      }
      event.dataTransfer.dropEffect = "copy";
      ui.dropZone.classList.add("drag-over");
    });
  });
  ui.dropZone.addEventListener("dragleave", (event) => {
    if (!ui.dropZone.contains(event.relatedTarget)) ui.dropZone.classList.remove("drag-over");
  });
  ui.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    ui.dropZone.classList.remove("drag-over");
    if (!state.uploadEnabled) return;
    const files = event.dataTransfer.files;
    if (!files || files.length === 0) {
      showError("Nothing to upload: drop an image file (PNG, JPEG or DICOM).");
      return;
    }
    try {
      ui.fileInput.files = files; // keep the picker in step with what was dropped
    } catch {
      // older browsers: the picker keeps its old value, the dropped file is still used
    }
    chooseFile(files[0]);
  });
  // A file dropped next to the zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  updateControls();
  checkHealth();
})();
