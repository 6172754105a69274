// The search page: every text from the server is set with textContent (never parsed as HTML), inside a <bdi> so
// that a right-to-left override in a caption or a file name cannot reorder the score or text around it.
"use strict";

const $ = (id) => document.getElementById(id);
let galleryOffset = 0;
let previewUrl = null;

// A message next to the action it answers: "message" (the page), "search-message" or "image-message".
function showMessage(id, text) {
  const box = $(id);
  box.textContent = text;
  box.hidden = !text;
  if (text) box.scrollIntoView({ block: "nearest" });
}

async function callApi(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error("the server cannot be reached: is `serve` still running?");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered HTTP ${response.status}`);
  }
  return body;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Text from the server, isolated from its neighbours (bidi).
function isolated(text, className) {
  return element("bdi", className, text);
}

// A path that may wrap after each "/" (a <wbr>) but never inside a name.
function pathElement(path) {
  const node = element("bdi", "path");
  path.split("/").forEach((part, index, parts) => {
    node.appendChild(document.createTextNode(part + (index < parts.length - 1 ? "/" : "")));
    if (index < parts.length - 1) node.appendChild(element("wbr"));
  });
  return node;
}

// A note made of plain text and isolated server texts: note("top 3 for ", ["a query"], ...).
function setNote(id, ...parts) {
  const box = $(id);
  box.replaceChildren(...parts.map((part) => (Array.isArray(part) ? isolated(part[0])
    : document.createTextNode(part))));
}

function imageFigure(url, alt) {
  const figure = element("figure");
  const img = element("img");
  img.alt = alt;
  if (url) img.src = url;
  figure.appendChild(img);
  return figure;
}

function renderResults(answer) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of answer.results) {
    const figure = imageFigure(hit.url, hit.path);
    figure.dataset.path = hit.path;
    figure.dataset.rank = hit.rank;
    if (hit.rank === 1) figure.classList.add("top");
    const caption = element("figcaption");
    caption.appendChild(element("div", "score", `#${hit.rank} · score ${hit.score.toFixed(3)}`));
    caption.appendChild(element("div")).appendChild(pathElement(hit.path));
    if (hit.captions && hit.captions.length) caption.appendChild(element("div", "caption")).appendChild(
      isolated(hit.captions[0]));
    figure.title = (hit.captions || []).join("\n");
    figure.appendChild(caption);
    grid.appendChild(figure);
  }
  const unknown = answer.unknown_words || [];
  setNote("search-note", `top ${answer.results.length} images for “`, [answer.query], "”",
    answer.k_note ? ` (${answer.k_note})` : "",
    ...(unknown.length ? [" (not in the model's vocabulary, read as unknown: ", [unknown.join(", ")], ")"] : []));
}

// Run the sentence in the box, and keep it in the address (?q=) so that the search can be linked.
async function search(event) {
  if (event) event.preventDefault();
  const params = new URLSearchParams({ q: $("query").value, k: $("k").value });
  history.replaceState(null, "", `?${params}`);
  try {
    const answer = await callApi(`/api/search?${params}`);
    showMessage("search-message", "");
    renderResults(answer);
  } catch (error) {
    $("results").replaceChildren();
    $("search-note").textContent = "";
    showMessage("search-message", error.message);
  }
}

function renderCaptions(answer, imageUrl) {
  $("image-query").hidden = false;
  $("query-image").src = imageUrl || "";
  setNote("captions-note", `top ${answer.results.length} captions for `, [answer.query],
    answer.k_note ? ` (${answer.k_note})` : "",
    answer.results.some((hit) => hit.own) ? " (its own captions in green)" : "");
  const list = $("captions");
  list.replaceChildren();
  for (const hit of answer.results) {
    const item = element("li", hit.own ? "own" : "");
    item.appendChild(element("span", "score", hit.score.toFixed(3)));
    item.appendChild(isolated(hit.text));
    if (hit.own) item.appendChild(document.createTextNode(" ✓"));
    if (hit.image) item.title = `caption of ${hit.image}`;
    list.appendChild(item);
  }
}

async function searchGalleryImage(position, url) {
  try {
    const answer = await callApi(`/api/similar?image=${position}&k=${encodeURIComponent($("k").value)}`);
    showMessage("image-message", "");
    renderCaptions(answer, url);
  } catch (error) {
    showMessage("image-message", error.message);
  }
}

async function searchUpload() {
  const file = $("upload").files[0];
  if (!file) return;
  try {
    const answer = await callApi(`/api/search-image?k=${encodeURIComponent($("k").value)}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    showMessage("image-message", "");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    renderCaptions(answer, previewUrl);
  } catch (error) {
    showMessage("image-message", error.message);
  }
}

async function loadGallery(pickable) {
  try {
    const page = await callApi(`/api/gallery?offset=${galleryOffset}`);
    for (const image of page.images) {
      const figure = imageFigure(image.url, image.path);
      figure.title = image.path;
      figure.dataset.position = image.position;
      if (pickable) figure.addEventListener("click", () => searchGalleryImage(image.position, image.url));
      $("gallery").appendChild(figure);
    }
    galleryOffset = page.offset + page.images.length;
    $("more").hidden = galleryOffset >= page.total;
  } catch (error) {
    $("more").hidden = true;
    $("gallery").replaceChildren(element("p", "meta", error.message));
  }
}

// What the gallery holds decides what the page offers: sentence search needs images, image search captions.
function setUp(info) {
  setNote("info", `${info.kind} model `, [info.model], ` (${info.similarity} similarity, ${info.vocabulary} ` +
    `words); gallery: ${info.images} images, ${info.captions} captions (`, [info.gallery], ")");
  $("k").value = info.k;
  $("k").max = info.max_k;
  $("query").placeholder = info.example ? `e.g. ${info.example}` : "";
  if (!info.images) {
    $("search-form").hidden = true;
    showMessage("search-message", "this gallery holds no images: sentence search is not offered (serve a store " +
      "split, or an embeddings file of `encode --images`)");
  }
  if (!info.captions) {
    $("image-search-form").hidden = true;
    $("gallery-heading").textContent = "Gallery (no captions to find for an image: image search is not offered; " +
      "serve a store split, or an embeddings file with captions)";
  }
}

async function start() {
  $("search-form").addEventListener("submit", search);
  $("upload").addEventListener("change", searchUpload);
  try {
    const info = await callApi("/api/info");
    setUp(info);
    $("more").addEventListener("click", () => loadGallery(info.captions > 0));
    const linked = new URLSearchParams(window.location.search);
    if (linked.get("q") && info.images) {
      $("query").value = linked.get("q");
      if (/^[0-9]+$/.test(linked.get("k") || "")) $("k").value = linked.get("k");
      search();
    }
    if (info.images) await loadGallery(info.captions > 0);
  } catch (error) {
    showMessage("message", error.message);
  }
}

start();
