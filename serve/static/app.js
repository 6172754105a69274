// The search page: every text from the server is set with textContent (never parsed as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
let galleryOffset = 0;
let previewUrl = null;

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

async function callApi(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error("the server cannot be reached: is `pipeline.py serve` still running?");
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
    caption.appendChild(element("div", "path", hit.path));
    if (hit.captions && hit.captions.length) caption.appendChild(element("div", "caption", hit.captions[0]));
    figure.title = (hit.captions || []).join("\n");
    figure.appendChild(caption);
    grid.appendChild(figure);
  }
  const unknown = answer.unknown_words || [];
  $("search-note").textContent = `top ${answer.results.length} images for “${answer.query}”` +
    (unknown.length ? ` (not in the model's vocabulary, read as unknown: ${unknown.join(", ")})` : "");
}

async function search(event) {
  event.preventDefault();
  const params = new URLSearchParams({ q: $("query").value, k: $("k").value });
  try {
    const answer = await callApi(`/api/search?${params}`);
    showMessage("");
    renderResults(answer);
  } catch (error) {
    $("results").replaceChildren();
    $("search-note").textContent = "";
    showMessage(error.message);
  }
}

function renderCaptions(answer, imageUrl) {
  $("image-query").hidden = false;
  $("query-image").src = imageUrl || "";
  $("captions-note").textContent = `top ${answer.results.length} captions for ${answer.query}` +
    (answer.results.some((hit) => hit.own) ? " (its own captions in green)" : "");
  const list = $("captions");
  list.replaceChildren();
  for (const hit of answer.results) {
    const item = element("li", hit.own ? "own" : "");
    item.appendChild(element("span", "score", hit.score.toFixed(3)));
    item.appendChild(document.createTextNode(hit.text + (hit.own ? " ✓" : "")));
    if (hit.image) item.title = `caption of ${hit.image}`;
    list.appendChild(item);
  }
}

async function searchGalleryImage(position, url) {
  try {
    const answer = await callApi(`/api/similar?image=${position}&k=${encodeURIComponent($("k").value)}`);
    showMessage("");
    renderCaptions(answer, url);
  } catch (error) {
    showMessage(error.message);
  }
}

async function searchUpload() {
  const file = $("upload").files[0];
  if (!file) return;
  try {
    const answer = await callApi(`/api/search-image?k=${encodeURIComponent($("k").value)}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    showMessage("");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    renderCaptions(answer, previewUrl);
  } catch (error) {
    showMessage(error.message);
  }
}

async function loadGallery() {
  try {
    const page = await callApi(`/api/gallery?offset=${galleryOffset}`);
    for (const image of page.images) {
      const figure = imageFigure(image.url, image.path);
      figure.title = image.path;
      figure.dataset.position = image.position;
      figure.addEventListener("click", () => searchGalleryImage(image.position, image.url));
      $("gallery").appendChild(figure);
    }
    galleryOffset = page.offset + page.images.length;
    $("more").hidden = galleryOffset >= page.total;
  } catch (error) {
    $("more").hidden = true;
    $("gallery").replaceChildren(element("p", "meta", error.message));
  }
}

async function start() {
  $("search-form").addEventListener("submit", search);
  $("upload").addEventListener("change", searchUpload);
  $("more").addEventListener("click", loadGallery);
  try {
    const info = await callApi("/api/info");
    $("info").textContent = `${info.kind} model ${info.model} (${info.similarity} similarity, ${info.vocabulary} ` +
      `words); gallery: ${info.images} images, ${info.captions} captions (${info.gallery})`;
    $("k").value = info.k;
    $("k").max = info.max_k;
    if (info.images) await loadGallery();
  } catch (error) {
    showMessage(error.message);
  }
}

start();
