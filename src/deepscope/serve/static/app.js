// deepscope explorer: the page's script. Served as a file (the Content-Security-Policy allows no inline
// script); every name from the server (photos, classes, layers, errors) is written with textContent.
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var SVG = "http://www.w3.org/2000/svg";
  var COST_ORDER = ["free", "one pass", "passes", "channels", "windows"];
  var CLIENT_MAPS = 600;  // maps kept in the page (oldest dropped first)
  var MAP_REQUESTS = 2;   // map requests in flight at once (see mapFor)

  var state = {
    info: null, photos: [], photo: null, predictions: [], target: null, targetName: "",
    method: null, layer: null, maps: new Map(), pending: 0, view: "photos",
    neuron: null, features: null, featureKey: "", chosenPoint: null, trustTimer: null
  };

  // ------------------------------------------------------------------------------------ helpers
  function el(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (key) {
      var value = props[key];
      if (key === "text") { node.textContent = value; }
      else if (key === "class") { node.className = value; }
      else if (key.slice(0, 2) === "on") { node.addEventListener(key.slice(2), value); }
      else { node.setAttribute(key, value); }
    });
    (children || []).forEach(function (child) { node.append(child); });
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    return node;
  }

  var token = new URLSearchParams(location.search).get("token");
  if (token) { history.replaceState(null, "", location.pathname); }  // the server set a cookie

  function api(path, options) {
    options = options || {};
    var headers = Object.assign({ "Accept": "application/json" }, options.headers || {});
    if (token) { headers["X-Deepscope-Token"] = token; }
    state.pending += 1;
    kickStatus();
    return fetch(path, Object.assign({}, options, { headers: headers, credentials: "same-origin" }))
      .then(function (response) {
        return response.json().catch(function () { return null; }).then(function (body) {
          if (!response.ok) {
            var error = new Error(body && body.error ? body.error : "HTTP " + response.status);
            error.status = response.status;
            throw error;
          }
          return body;
        });
      })
      .finally(function () { state.pending -= 1; });
  }

  function showError(id, message) {
    var node = $(id);
    node.textContent = message || "";
    node.hidden = !message;
  }

  function photoUrl(id, kind) { return "/api/photos/" + encodeURIComponent(id) + "/" + kind; }
  function percent(p) { return (100 * p).toFixed(p >= 0.1 ? 0 : 1) + "%"; }
  function methodInfo(name) { return state.info.methods.find(function (m) { return m.name === name; }); }

  // ------------------------------------------------------------------------------------ status
  var statusTimer = null;
  function kickStatus() { if (statusTimer === null) { statusTimer = setTimeout(pollStatus, 150); } }
  function pollStatus() {
    statusTimer = null;
    api("/api/status").then(renderStatus).catch(function () {
      setStatus("failed", "the server does not answer");
    }).finally(function () {
      var busy = state.pending > 1 || !state.info || (state.trust && state.trust === "running");
      if (statusTimer === null) { statusTimer = setTimeout(pollStatus, busy ? 700 : 4000); }
    });
  }
  function setStatus(kind, text) {
    $("status").className = "status " + kind;
    $("status-text").textContent = text;
    $("status").title = text;
  }
  function renderStatus(status) {
    if (status.model === "loading") { setStatus("busy", "loading the model…"); return; }
    if (status.model !== "ready") { setStatus("failed", status.model); return; }
    var parts = [], waiting = 0;
    status.workers.forEach(function (worker) {
      waiting += worker.queued;
      if (worker.running) { parts.push(worker.running + " · " + worker.running_seconds.toFixed(1) + " s"); }
    });
    if (parts.length) {
      setStatus("busy", "computing " + parts.join("; ") + (waiting ? " · " + waiting + " waiting" : ""));
    } else {
      var cached = status.workers[0].cached;
      setStatus("ready", "ready · " + cached + " results in memory" +
        (status.memory_megabytes ? " · " + Math.round(status.memory_megabytes) + " MB" : ""));
    }
  }

  // ------------------------------------------------------------------------------------ start
  function start() {
    pollStatus();
    setupToolbar();
    setupTabs();
    setupUploads();
    setupLightbox();
    setupClassForm();
    $("viewer").addEventListener("click", openLightbox);
    api("/api/info").then(function (info) {
      state.info = info;
      $("model-name").textContent = info.model;
      $("model-meta").textContent = info.source + " · input " + info.input_size + " px · " + info.classes +
        " classes · " + info.photos + " photo(s)";
      document.title = "deepscope explorer: " + info.model;
      $("scale-unsigned").src = info.scales.unsigned;
      $("scale-signed").src = info.scales.signed;
      state.layer = info.default_layer;
      buildMethods(info);
      buildLayers(info);
      api("/api/classes").then(function (classes) {
        var list = $("class-names");
        classes.names.forEach(function (name, i) { list.append(el("option", { value: name, label: String(i) })); });
      });
      return loadPhotos();
    }).catch(function (error) {
      $("banner").textContent = error.message;
      $("banner").hidden = false;
      $("model-name").textContent = "the model could not be loaded";
    });
  }

  function setupToolbar() {
    var slider = $("opacity");
    function apply() {
      document.documentElement.style.setProperty("--overlay", slider.value);
      $("opacity-value").textContent = Math.round(slider.value * 100) + "%";
    }
    slider.addEventListener("input", apply);
    apply();
  }

  function setupTabs() {
    document.querySelectorAll("nav.tabs button").forEach(function (button) {
      button.addEventListener("click", function () { showView(button.getAttribute("data-view")); });
    });
  }

  function showView(view) {
    state.view = view;
    document.body.setAttribute("data-view", view);
    document.querySelectorAll("nav.tabs button").forEach(function (button) {
      button.setAttribute("aria-selected", button.getAttribute("data-view") === view ? "true" : "false");
    });
    document.querySelectorAll("section.view").forEach(function (section) {
      section.hidden = section.id !== "view-" + view;
    });
    $("toolbar-hint").textContent = {
      photos: "click a class to explain it · click a map to compare",
      neurons: "pick a layer and a channel · click a crop to open its photo",
      features: "scroll to zoom · drag to pan · click a photo",
      trust: "lower deletion AUC and higher insertion AUC are better"
    }[view];
    if (!state.info) { return; }
    if (view === "features") { loadFeatures(); }
    if (view === "trust") { loadTrust(); }
  }

  // ------------------------------------------------------------------------------------ photos view
  function loadPhotos(select) {
    return api("/api/photos").then(function (body) {
      state.photos = body.photos;
      var list = $("photo-list");
      list.replaceChildren();
      body.photos.forEach(function (photo) {
        list.append(el("button", {
          type: "button", class: "thumb" + (photo.source === "upload" ? " upload" : ""), role: "option",
          "aria-selected": "false", "data-photo": photo.id, title: photo.name,
          onclick: function () { selectPhoto(photo); }
        }, [el("img", { src: photoUrl(photo.id, "thumb"), alt: "", loading: "lazy" }), el("span", { text: photo.name })]));
      });
      var chosen = select ? body.photos.find(function (p) { return p.id === select; }) : null;
      if (chosen || (!state.photo && body.photos.length)) { selectPhoto(chosen || body.photos[0]); }
      else if (state.photo) { markSelectedPhoto(); }
    });
  }

  function markSelectedPhoto() {
    document.querySelectorAll("#photo-list .thumb").forEach(function (button) {
      button.setAttribute("aria-selected", state.photo && button.getAttribute("data-photo") === state.photo.id ? "true" : "false");
    });
  }

  function selectPhoto(photo) {
    state.photo = photo;
    state.target = null;
    state.targetName = "";
    state.predictions = [];
    markSelectedPhoto();
    $("photo-name").textContent = photo.name;
    $("viewer-photo").src = photoUrl(photo.id, "image");
    $("viewer-photo").alt = photo.name;
    document.querySelectorAll("#method-strip .tile .photo").forEach(function (img) { img.src = photoUrl(photo.id, "image"); });
    $("predictions").replaceChildren(el("li", { class: "muted", text: "classifying…" }));
    showError("class-error", "");
    updateTargetChip();
    requestAllMaps();
    api(photoUrl(photo.id, "predictions")).then(function (body) {
      if (state.photo !== photo) { return; }
      state.predictions = body.predictions;
      renderPredictions();
      updateTargetChip();
    }).catch(function (error) {
      $("predictions").replaceChildren(el("li", { class: "error", text: error.message }));
    });
  }

  function renderPredictions() {
    var list = $("predictions");
    list.replaceChildren();
    state.predictions.forEach(function (p, i) {
      var meter = el("span");
      meter.style.width = Math.max(1, Math.round(100 * p.probability)) + "%";
      var pressed = state.target === null ? i === 0 : state.target === p.index;
      list.append(el("li", {}, [el("button", {
        type: "button", "aria-pressed": pressed ? "true" : "false", "data-class": String(p.index),
        title: "explain " + p.name + " (class " + p.index + ")",
        onclick: function () { setTarget(i === 0 ? null : p.index, p.name); }
      }, [el("span", { class: "name", text: p.name }), el("span", { class: "prob", text: percent(p.probability) }),
          el("span", { class: "meter" }, [meter])])]));
    });
  }

  function updateTargetChip() {
    var text;
    if (state.target === null) {
      text = state.predictions.length ? state.predictions[0].name + " (predicted)" : "the predicted class";
    } else {
      text = state.targetName + " (class " + state.target + ")";
    }
    $("target-chip").textContent = "explains: " + text;
  }

  function setTarget(index, name) {
    state.target = index;
    state.targetName = name;
    updateTargetChip();
    renderPredictions();
    requestAllMaps();
  }

  function setupClassForm() {
    $("class-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var text = $("class-input").value.trim();
      if (!text) { return; }
      api("/api/classes/resolve?name=" + encodeURIComponent(text)).then(function (found) {
        showError("class-error", "");
        var top = state.predictions.length ? state.predictions[0].index : -1;
        setTarget(found.index === top ? null : found.index, found.name);
      }).catch(function (error) { showError("class-error", error.message); });
    });
  }

  function buildMethods(info) {
    var order = info.methods.filter(function (m) { return !m.control; })
      .concat(info.methods.filter(function (m) { return m.control; }));
    var switcher = $("method-switch"), strip = $("method-strip");
    switcher.replaceChildren();
    strip.replaceChildren();
    order.forEach(function (m) {
      switcher.append(el("button", {
        type: "button", "data-method": m.name, "aria-pressed": "false", class: m.control ? "control" : "",
        title: m.summary + " (" + m.paper + ")", onclick: function () { selectMethod(m.name); }
      }, [m.name]));
      var stack = el("div", { class: "stack" }, [
        el("img", { class: "photo", alt: "" }), el("img", { class: "overlay", alt: m.name + " map", hidden: "" }),
        el("div", { class: "spinner", hidden: "" }), el("div", { class: "na-box", hidden: "" })]);
      strip.append(el("figure", { class: "tile", "data-method": m.name, title: m.summary, onclick: function () { selectMethod(m.name); } },
        [stack, el("figcaption", {}, [el("span", { text: m.name }), el("span", { class: "sec" })])]));
    });
    state.method = (order.find(function (m) { return m.name === "gradcam"; }) || order[0]).name;
    markMethod();
  }

  function buildLayers(info) {
    var select = $("layer-select"), neuron = $("neuron-layer");
    info.layers.forEach(function (layer) {
      var label = layer.name + "  (" + layer.channels + " ch, " + (layer.height ? layer.height + "×" + layer.width : "tokens") + ")";
      select.append(el("option", { value: layer.name, text: label }));
      neuron.append(el("option", { value: layer.name, text: label }));
    });
    if (info.default_layer) { select.value = info.default_layer; }
    if (!info.layers.length) {
      select.disabled = true;
      $("layer-hint").textContent = "This model has no layer with a spatial map; the CAM methods do not apply.";
    }
    select.addEventListener("change", function () { state.layer = select.value; requestAllMaps(); });
    setupNeurons(info);
  }

  function selectMethod(name) {
    state.method = name;
    hurry(name);
    markMethod();
    renderViewer();
  }

  function markMethod() {
    document.querySelectorAll("#method-switch button").forEach(function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-method") === state.method ? "true" : "false");
    });
    document.querySelectorAll("#method-strip .tile").forEach(function (tile) {
      tile.classList.toggle("selected", tile.getAttribute("data-method") === state.method);
    });
    var m = methodInfo(state.method);
    $("showing-name").textContent = state.method;
    $("showing-settings").textContent = m ? "(" + m.settings + (m.layer ? ", layer " + (state.layer || "default") : "") + ")" : "";
  }

  function mapKey(method) {
    var m = methodInfo(method);
    return [state.photo.id, method, state.target === null ? "pred" : state.target, m.layer ? state.layer || "" : ""].join("|");
  }

  // Map requests wait in the page's own queue and go out MAP_REQUESTS at a time: the server computes one map
  // at a time anyway, the browser keeps connections free for everything else (status, predictions, other
  // views), and maps that are no longer wanted (another photo, class or layer was chosen) are never asked for.
  var mapQueue = [], mapsInFlight = 0;

  function mapFor(method) {
    var key = mapKey(method);
    var entry = state.maps.get(key);
    if (entry && entry.status !== "error") { return entry; }
    var params = new URLSearchParams();
    if (state.target !== null) { params.set("target", String(state.target)); }
    if (methodInfo(method).layer && state.layer) { params.set("layer", state.layer); }
    var url = photoUrl(state.photo.id, "maps/" + encodeURIComponent(method)) + "?" + params.toString();
    entry = { status: "pending", key: key, method: method };
    entry.promise = new Promise(function (resolve) { mapQueue.push({ entry: entry, url: url, resolve: resolve }); });
    state.maps.set(key, entry);
    while (state.maps.size > CLIENT_MAPS) { state.maps.delete(state.maps.keys().next().value); }
    return entry;
  }

  function wanted(key) {
    return !!state.photo && state.info.methods.some(function (m) { return mapKey(m.name) === key; });
  }

  function pumpMaps() {
    while (mapsInFlight < MAP_REQUESTS && mapQueue.length) {
      var job = mapQueue.shift();
      if (!wanted(job.entry.key)) {
        state.maps.delete(job.entry.key);
        job.entry.status = "dropped";
        job.resolve();
        continue;
      }
      mapsInFlight += 1;
      (function (job) {
        api(job.url).then(function (data) { job.entry.status = "done"; job.entry.data = data; },
                          function (error) { job.entry.status = "error"; job.entry.error = error.message; })
          .then(function () { mapsInFlight -= 1; job.resolve(); pumpMaps(); });
      })(job);
    }
  }

  function hurry(method) {
    var key = mapKey(method);
    var at = mapQueue.findIndex(function (job) { return job.entry.key === key; });
    if (at > 0) { mapQueue.unshift(mapQueue.splice(at, 1)[0]); }
  }

  function requestAllMaps() {
    if (!state.photo || !state.info) { return; }
    markMethod();
    var names = state.info.methods.slice().sort(function (a, b) {
      if (a.name === state.method) { return -1; }
      if (b.name === state.method) { return 1; }
      return COST_ORDER.indexOf(a.cost) - COST_ORDER.indexOf(b.cost);
    }).map(function (m) { return m.name; });
    var photo = state.photo;
    names.forEach(function (name) {
      var entry = mapFor(name);
      var key = mapKey(name);
      updateTile(name);
      entry.promise.then(function () {
        if (state.photo === photo && mapKey(name) === key) {
          updateTile(name);
          if (name === state.method) { renderViewer(); }
          updateProgress();
        }
      });
    });
    pumpMaps();
    renderViewer();
    updateProgress();
  }

  function updateProgress() {
    if (!state.photo) { return; }
    var total = state.info.methods.length, done = 0;
    state.info.methods.forEach(function (m) {
      var entry = state.maps.get(mapKey(m.name));
      if (entry && entry.status !== "pending") { done += 1; }
    });
    $("map-progress").textContent = done === total ? "all " + total + " maps ready" : "computing maps: " + done + " of " + total + " ready";
  }

  function paint(stack, entry) {
    var overlay = stack.querySelector(".overlay"), spinner = stack.querySelector(".spinner");
    var note = stack.querySelector(".na, .na-box");
    spinner.hidden = !(entry && entry.status === "pending");
    if (entry && entry.status === "done" && entry.data.applicable) {
      overlay.src = entry.data.image;
      overlay.hidden = false;
      note.hidden = true;
    } else {
      overlay.hidden = true;
      var text = !entry || entry.status === "pending" ? "" : entry.status === "error" ? entry.error : entry.data.note;
      note.textContent = text;
      note.hidden = !text;
    }
  }

  function updateTile(name) {
    var tile = document.querySelector('#method-strip .tile[data-method="' + CSS.escape(name) + '"]');
    if (!tile) { return; }
    var entry = state.maps.get(mapKey(name));
    paint(tile.querySelector(".stack"), entry);
    var seconds = entry && entry.status === "done" && entry.data.seconds !== undefined ? entry.data.seconds.toFixed(1) + " s" : "";
    tile.querySelector(".sec").textContent = seconds;
    var button = document.querySelector('#method-switch button[data-method="' + CSS.escape(name) + '"]');
    var na = entry && ((entry.status === "done" && !entry.data.applicable) || entry.status === "error");
    button.classList.toggle("na-method", !!na);
  }

  function renderViewer() {
    if (!state.photo) { return; }
    paint($("viewer"), state.maps.get(mapKey(state.method)));
  }

  // ------------------------------------------------------------------------------------ uploads
  function setupUploads() {
    var drop = $("drop"), library = $("library");
    ["dragenter", "dragover"].forEach(function (type) {
      library.addEventListener(type, function (event) { event.preventDefault(); drop.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (type) {
      library.addEventListener(type, function () { drop.classList.remove("over"); });
    });
    library.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer.files.length) { upload(event.dataTransfer.files[0]); }
    });
    $("file").addEventListener("change", function () {
      if ($("file").files.length) { upload($("file").files[0]); }
      $("file").value = "";
    });
  }

  function upload(file) {
    showError("upload-error", "");
    $("drop").querySelector(".drop-title").textContent = "uploading " + file.name + "…";
    api("/api/photos", {
      method: "POST", body: file,
      headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name) }
    }).then(function (body) {
      state.features = null;
      return loadPhotos(body.photo.id);
    }).catch(function (error) {
      showError("upload-error", error.message);
    }).finally(function () {
      $("drop").querySelector(".drop-title").textContent = "Drop a photo here";
    });
  }

  // ------------------------------------------------------------------------------------ lightbox
  function setupLightbox() {
    var box = $("lightbox");
    box.addEventListener("click", function () { box.hidden = true; $("lb-content").replaceChildren(); });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && !box.hidden) { box.hidden = true; $("lb-content").replaceChildren(); }
    });
  }

  function openLightbox() {
    if (!state.photo) { return; }
    var copy = $("viewer").cloneNode(true);
    copy.removeAttribute("id");
    copy.querySelectorAll("[id]").forEach(function (node) { node.removeAttribute("id"); });
    $("lb-content").replaceChildren(copy);
    $("lb-caption").textContent = state.photo.name + " · " + state.method + " · " + $("target-chip").textContent;
    $("lightbox").hidden = false;
  }

  // ------------------------------------------------------------------------------------ neurons view
  function setupNeurons(info) {
    var select = $("neuron-layer"), channel = $("neuron-channel");
    if (!info.layers.length) {
      $("neuron-intro").textContent = "This model has no layer with a spatial map, so it has no neurons to show.";
      $("neuron-show").disabled = true;
      return;
    }
    select.value = info.layers[Math.min(info.layers.length - 1, Math.floor(info.layers.length * 2 / 3))].name;
    function range() {
      var layer = info.layers.find(function (l) { return l.name === select.value; });
      channel.max = String(layer.channels - 1);
      $("neuron-range").textContent = "0–" + (layer.channels - 1);
      return layer;
    }
    select.addEventListener("change", range);
    range();
    $("neuron-form").addEventListener("submit", function (event) {
      event.preventDefault();
      showNeuron(select.value, parseInt(channel.value, 10));
    });
    $("neuron-random").addEventListener("click", function () {
      var layer = range();
      channel.value = String(Math.floor(Math.random() * layer.channels));
      showNeuron(select.value, parseInt(channel.value, 10));
    });
  }

  function showNeuron(layer, channel) {
    if (isNaN(channel)) { showError("neuron-error", "channel: give a whole number."); return; }
    var key = layer + ":" + channel;
    state.neuron = key;
    showError("neuron-error", "");
    $("neuron-title").textContent = layer + ", channel " + channel + ": finding its top photos…";
    $("neuron-crops").replaceChildren(el("div", { class: "opt-box" }, [el("div", { class: "spinner" })]));
    $("optimised-image").hidden = true;
    $("optimised-spinner").hidden = false;
    $("optimised-caption").textContent = "optimising an image for this channel…";
    var query = "?layer=" + encodeURIComponent(layer) + "&channel=" + channel;
    api("/api/neurons" + query).then(function (view) {
      if (state.neuron !== key) { return; }
      $("neuron-title").textContent = layer + ", channel " + channel + ": top " + view.items.length +
        " crops (receptive field " + view.field.size + " px, stride " + view.field.stride + ", " + view.field.method +
        ") and the " + view.gradient_method + " of each neuron";
      var crops = $("neuron-crops");
      crops.replaceChildren();
      view.items.forEach(function (item) {
        crops.append(el("figure", { class: "crop", title: "open " + item.name + " in the photo view",
          onclick: function () { openPhoto(item.photo); } }, [
          el("img", { src: item.crop, alt: "crop of " + item.name }),
          el("img", { src: item.guided, alt: view.gradient_method + " of " + item.name }),
          el("figcaption", { text: item.activation.toFixed(2) + " · " + item.name })]));
      });
    }).catch(function (error) {
      if (state.neuron !== key) { return; }
      $("neuron-crops").replaceChildren();
      $("neuron-title").textContent = "–";
      showError("neuron-error", error.message);
    });
    api("/api/neurons/optimised" + query).then(function (result) {
      if (state.neuron !== key) { return; }
      $("optimised-image").src = result.image;
      $("optimised-image").hidden = false;
      $("optimised-caption").textContent = "optimised to excite channel " + channel + " (Lucid preset, " +
        result.steps + " steps, " + result.seconds.toFixed(0) + " s)";
    }).catch(function (error) {
      if (state.neuron === key) { $("optimised-caption").textContent = error.message; }
    }).finally(function () {
      if (state.neuron === key) { $("optimised-spinner").hidden = true; }
    });
  }

  function openPhoto(id) {
    var photo = state.photos.find(function (p) { return p.id === id; });
    if (!photo) { return; }
    showView("photos");
    selectPhoto(photo);
    window.scrollTo(0, 0);
  }

  // ------------------------------------------------------------------------------------ feature view
  var view = { k: 1, x: 0, y: 0, width: 1000, height: 560 };

  function loadFeatures() {
    var space = $("feature-space").value, projection = $("feature-projection").value;
    var key = space + "|" + projection + "|" + state.photos.length;
    if (state.features && state.featureKey === key) { return; }
    state.featureKey = key;
    showError("feature-error", "");
    $("scatter-spinner").hidden = false;
    api("/api/features?space=" + space + "&projection=" + projection).then(function (result) {
      if (state.featureKey !== key) { return; }
      state.features = result;
      $("feature-info").textContent = result.points.length + " photos · " + result.layer + " (" + result.dimensions + "-d)" +
        (result.explained_variance ? " · variance explained " + result.explained_variance.map(percent).join(", ") : "");
      drawScatter();
      if (state.chosenPoint) { highlight(state.chosenPoint); }
    }).catch(function (error) {
      showError("feature-error", error.message);
      state.featureKey = "";
    }).finally(function () { $("scatter-spinner").hidden = true; });
  }

  function thumbSize() {
    var n = state.features ? state.features.points.length : 1;
    return n > 300 ? 26 : n > 80 ? 36 : n > 20 ? 48 : 76;
  }

  function drawScatter() {
    var group = $("scatter-view");
    group.replaceChildren();
    var size = thumbSize();
    state.features.points.forEach(function (point) {
      var g = svg("g", { class: "pt", "data-photo": point.photo });
      var title = svg("title");
      title.textContent = point.name + (point.predicted ? " · " + point.predicted : "");
      g.append(title, svg("image", { href: photoUrl(point.photo, "thumb"), x: -size / 2, y: -size / 2, width: size, height: size,
        preserveAspectRatio: "xMidYMid slice" }), svg("rect", { x: -size / 2, y: -size / 2, width: size, height: size, rx: 3 }));
      g.addEventListener("click", function (event) {
        if (dragged) { return; }
        event.stopPropagation();
        chooseNeighbours(point.photo);
      });
      point.node = g;
      group.append(g);
    });
    placePoints();
  }

  function placePoints() {
    if (!state.features) { return; }
    var margin = 50;
    state.features.points.forEach(function (point) {
      var x = margin + point.x * (view.width - 2 * margin), y = margin + point.y * (view.height - 2 * margin);
      point.node.setAttribute("transform", "translate(" + (x * view.k + view.x).toFixed(1) + " " + (y * view.k + view.y).toFixed(1) + ")");
    });
  }

  var dragged = false;
  function setupScatter() {
    var box = $("scatter");
    box.setAttribute("viewBox", "0 0 " + view.width + " " + view.height);
    function toView(event) {
      var point = box.createSVGPoint();
      point.x = event.clientX;
      point.y = event.clientY;
      return point.matrixTransform(box.getScreenCTM().inverse());
    }
    function zoom(factor, at) {
      var k = Math.min(40, Math.max(0.5, view.k * factor));
      view.x = at.x - (at.x - view.x) * k / view.k;
      view.y = at.y - (at.y - view.y) * k / view.k;
      view.k = k;
      placePoints();
    }
    box.addEventListener("wheel", function (event) {
      event.preventDefault();
      zoom(Math.exp(-event.deltaY * 0.0015), toView(event));
    }, { passive: false });
    var start = null;
    box.addEventListener("pointerdown", function (event) {
      start = { p: toView(event), x: view.x, y: view.y };
      dragged = false;
    });
    box.addEventListener("pointermove", function (event) {
      if (!start) { return; }
      var p = toView(event);
      if (!dragged && Math.hypot(p.x - start.p.x, p.y - start.p.y) < 4) { return; }
      if (!dragged) { box.setPointerCapture(event.pointerId); }
      dragged = true;
      box.classList.add("dragging");
      view.x = start.x + p.x - start.p.x;
      view.y = start.y + p.y - start.p.y;
      placePoints();
    });
    function end() { start = null; box.classList.remove("dragging"); setTimeout(function () { dragged = false; }, 0); }
    box.addEventListener("pointerup", end);
    box.addEventListener("pointercancel", end);
    function focus() {  // the chosen photo, else the middle of the view
      var chosen = state.chosenPoint && document.querySelector('#scatter .pt[data-photo="' + CSS.escape(state.chosenPoint) + '"]');
      if (chosen) {
        var box = chosen.transform.baseVal.consolidate().matrix;
        return { x: box.e, y: box.f };
      }
      return { x: view.width / 2, y: view.height / 2 };
    }
    $("zoom-in").addEventListener("click", function () { zoom(1.5, focus()); });
    $("zoom-out").addEventListener("click", function () { zoom(1 / 1.5, focus()); });
    $("zoom-reset").addEventListener("click", function () { view.k = 1; view.x = 0; view.y = 0; placePoints(); });
    $("feature-space").addEventListener("change", loadFeatures);
    $("feature-projection").addEventListener("change", loadFeatures);
  }

  function chooseNeighbours(id) {
    state.chosenPoint = id;
    var photo = state.photos.find(function (p) { return p.id === id; });
    $("neighbours-hint").textContent = "finding the neighbours of " + (photo ? photo.name : id) + "…";
    $("neighbours-hint").hidden = false;
    api("/api/features/neighbours?photo=" + encodeURIComponent(id)).then(function (result) {
      if (state.chosenPoint !== id) { return; }
      $("neighbours-hint").hidden = true;
      $("neighbours-body").hidden = false;
      $("query-thumb").src = photoUrl(id, "thumb");
      $("query-name").textContent = result.name;
      var point = state.features && state.features.points.find(function (p) { return p.photo === id; });
      $("query-class").textContent = point && point.predicted ? "predicted: " + point.predicted : "";
      $("query-open").onclick = function () { openPhoto(id); };
      $("nn-features-title").textContent = "in feature space (" + result.features_layer + ")";
      $("nn-pixels-title").textContent = "in pixel space (" + result.pixels_layer + ")";
      [["features", "nn-features"], ["pixels", "nn-pixels"]].forEach(function (pair) {
        var row = $(pair[1]);
        row.replaceChildren();
        result[pair[0]].forEach(function (n) {
          row.append(el("figure", { class: "nn", title: n.name + (n.predicted ? " · " + n.predicted : "") + " · distance " + n.distance,
            onclick: function () { chooseNeighbours(n.photo); } }, [
            el("img", { src: photoUrl(n.photo, "thumb"), alt: n.name }),
            el("figcaption", {}, [el("b", { text: n.distance.toFixed(3) }), el("br"), n.predicted || n.name])]));
        });
      });
      highlight(id, result.features.map(function (n) { return n.photo; }));
    }).catch(function (error) { $("neighbours-hint").textContent = error.message; });
  }

  function highlight(id, near) {
    near = near || [];
    document.querySelectorAll("#scatter .pt").forEach(function (g) {
      var photo = g.getAttribute("data-photo");
      g.classList.toggle("chosen", photo === id);
      g.classList.toggle("near", near.indexOf(photo) >= 0);
      if (photo === id) { g.parentNode.append(g); }  // draw on top
    });
  }

  // ------------------------------------------------------------------------------------ trust view
  function loadTrust() {
    api("/api/trust").then(renderTrust).catch(function (error) { $("trust-state").textContent = error.message; });
  }

  function renderTrust(trust) {
    state.trust = trust.state;
    var head = $("trust-head");
    head.replaceChildren();
    trust.columns.forEach(function (column) { head.append(el("th", { scope: "col", text: column })); });
    var body = $("trust-body");
    body.replaceChildren();
    trust.methods.forEach(function (method, i) {
      var row = trust.rows[i];
      var control = method === "random" || method === "center";
      var kind = row ? (control ? "control" : "") : "pending" + (trust.current === method ? " running" : "");
      var cells = row || [method].concat(trust.columns.slice(1).map(function () { return "–"; }));
      body.append(el("tr", { class: kind }, cells.map(function (cell) { return el("td", { text: cell }); })));
    });
    var notes = $("trust-notes");
    notes.replaceChildren();
    (trust.notes || []).forEach(function (note) { notes.append(el("li", { text: note })); });
    var button = $("trust-start");
    var running = trust.state === "running" || trust.state === "queued";
    var current = trust.state === "done" && trust.photos === state.photos.length;
    button.disabled = running || current;
    button.textContent = current ? "computed for these photos" : trust.state === "done" ? "compute again with the new photos"
      : "compute the trust table";
    $("trust-bar").hidden = !running;
    if (trust.total) { $("trust-bar-fill").style.width = Math.round(100 * trust.done / trust.total) + "%"; }
    var words = {
      idle: "not computed yet: " + trust.methods.length + " methods; takes minutes on a CPU",
      queued: "waiting for the background worker…",
      running: "method " + (trust.done + 1) + " of " + trust.total + ": " + (trust.current || "") + " · " + trust.seconds + " s",
      done: "done in " + trust.seconds + " s on " + trust.photos + " photo(s)",
      failed: "failed: " + trust.error
    };
    $("trust-state").textContent = words[trust.state] || trust.state;
    $("trust-caption").textContent = trust.settings ? "mean ± standard error; random and center are controls. " + trust.settings : "";
    clearTimeout(state.trustTimer);
    if (running) { state.trustTimer = setTimeout(loadTrust, 1500); }
  }

  function setupTrust() {
    $("trust-start").addEventListener("click", function () {
      api("/api/trust", { method: "POST" }).then(renderTrust).catch(function (error) { $("trust-state").textContent = error.message; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupScatter();
    setupTrust();
    start();
  });
})();
