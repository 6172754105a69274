"""What the page asks of the model: sentence -> images, image (from the gallery or uploaded) -> captions."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from pathlib import Path
from urllib.parse import quote

import torch

from eval.blocks import swap_sim
from features.reader import FeatureStore
from retrieval.api import VSE, text_tokens
from retrieval.embeddings import EmbeddingsFile
from retrieval.results import Gallery
from retrieval.search import check_model, exact_topk
from serve.config import MAX_K, MAX_QUERY_CHARS, ServeConfig
from serve.safety import ImageFiles, QueryError, decode_upload, relative_inside
from train.losses.similarity import similarity_function

logger = logging.getLogger(__name__)

GALLERY_PAGE = 48  # gallery images listed per request of the picker
_WHOLE = re.compile(r"[0-9]{1,9}")  # a request's whole number: ASCII digits, at most 9 (int() of any is fast)


def image_root_of(cfg: ServeConfig, embeddings: EmbeddingsFile, image_labels: list[str]) -> Path:
    """--image-root, else the file's image root (a fine-tuned split), its store's, else the images' common folder."""
    root = cfg.image_root or embeddings.attrs.get("image_root") or ""
    store = cfg.store or embeddings.attrs.get("store") or ""
    if not root and store and Path(store).is_file():
        with FeatureStore(store) as opened:
            root = opened.attrs.get("image_root", "")
    if not root and image_labels and embeddings.attrs.get("source") == "images":
        root = os.path.commonpath([str(Path(label).resolve().parent) for label in image_labels])
    if not root:
        raise ValueError(f"no image root is known for {embeddings.path}: pass --image-root FOLDER (the images are "
                         "served from inside it only)")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image root {root} is not a folder; pass --image-root FOLDER")
    return Path(root)


def example_query(galleries: dict[str, Gallery]) -> str:
    """A short caption of the gallery for the search box's placeholder ("" when it holds no captions)."""
    captions, images = galleries.get("captions"), galleries.get("images")
    if captions is not None:
        texts = captions.labels
    else:  # a store split's images know their captions; an `encode --images` file's do not
        texts = [text for known in (images.related or []) for text in known] if images is not None else []
    short = [text for text in texts[:1000] if 0 < len(text) <= 80]
    return min(short, key=lambda text: (abs(len(text) - 40), text)) if short else ""


class SearchService:
    """The model and the gallery's embeddings in memory; every method returns the JSON the page shows or raises
    QueryError with the message for the page."""

    def __init__(self, vse: VSE, galleries: dict[str, Gallery], *, files: ImageFiles, urls: dict[str, str],
                 cfg: ServeConfig, source: str) -> None:
        self.vse, self.galleries, self.files, self.urls, self.cfg, self.source = vse, galleries, files, urls, cfg, source
        self.sim = similarity_function(vse.similarity_name)
        # One sentence embedded at a time (the server answers from a thread pool); uploads are bounded apart, by the
        # app's UPLOADS_AT_ONCE, and run the CNN beside it: searches do not queue behind uploads.
        self.text_lock = threading.Lock()
        self.example = example_query(galleries)

    @classmethod
    def load(cls, cfg: ServeConfig, embeddings_path: str | Path) -> "SearchService":
        """The model and both sides of the embeddings file, checked to belong together, held in memory."""
        with EmbeddingsFile(embeddings_path) as embeddings:
            checkpoint = cfg.checkpoint or embeddings.attrs.get("checkpoint", "")
            vse = VSE.load(checkpoint, device=cfg.device, store=cfg.store or embeddings.attrs.get("store") or None,
                           weights=cfg.weights or None, batch_size=cfg.batch_size)
            check_model(embeddings, vse)
            galleries = {}
            for group in embeddings.groups:
                gallery = Gallery.from_file(embeddings, group)
                emb = torch.from_numpy(embeddings.read(group, gallery.rows))
                galleries[group] = dataclasses.replace(gallery, emb=emb, path=None)
            labels = list(embeddings.labels("images")) if "images" in embeddings.groups else []
            root = image_root_of(cfg, embeddings, labels)
            from_split = embeddings.attrs.get("source") == "store-split"
            # a split's paths are relative to the root; an `encode --images` file holds the paths as given
            relatives = {label: relative_inside(root, root / label if from_split else Path(label)) for label in labels}
            outside = sum(relative is None for relative in relatives.values())
            if outside:
                logger.warning("%d gallery image(s) lie outside the image root %s and are not shown", outside, root)
            relatives = {label: relative for label, relative in relatives.items() if relative is not None}
            files = ImageFiles(root, list(relatives.values()))
            urls = {label: "/images/" + quote(relative) for label, relative in relatives.items()}
            attrs = embeddings.attrs
            source = (f"{attrs.get('split')} split of {attrs.get('store')}" if from_split
                      else f"{attrs.get('source')} of {embeddings.path}")
        return cls(vse, galleries, files=files, urls=urls, cfg=cfg, source=source)

    # -- what the page shows --------------------------------------------------------------------
    def info(self) -> dict:
        """What the page says of the model and gallery, and how it sets itself up (results box, example query)."""
        images, captions = self.galleries.get("images"), self.galleries.get("captions")
        ranked = images or captions
        return {"model": str(self.vse.path), "kind": self.vse.kind, "similarity": self.vse.similarity_name,
                "gallery": self.source, "images": images.size if images else 0,
                "captions": captions.size if captions else 0, "max_k": MAX_K,
                "k": min(self.cfg.k, ranked.size) if ranked else self.cfg.k, "example": self.example,
                "max_upload_bytes": self.cfg.max_upload_bytes, "max_query_chars": MAX_QUERY_CHARS,
                "vocabulary": len(self.vse.loaded.vocab)}

    def text_search(self, query: str, k: str | int | None) -> dict:
        """Images for a sentence; an empty, overlong or wholly unknown sentence is a QueryError."""
        gallery = self._gallery("images", "sentence search needs image embeddings (a store split, or `encode "
                                          "--images`)")
        text = (query or "").strip()
        if len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}: describe "
                             "an image in a sentence")
        try:
            tokens = text_tokens([text], tokenizer=self.vse.loaded.vocab.tokenizer)[0]
        except ValueError:
            example = f', e.g. "{self.example}"' if self.example else ""
            raise QueryError(f"type a sentence to search for{example}") from None
        vocab = self.vse.loaded.vocab
        unknown = [token for token in tokens if token not in vocab]
        if len(unknown) == len(tokens):
            raise QueryError(f"none of the words of \"{_cut(text)}\" is in the model's vocabulary ({len(vocab)} words "
                             "from its training captions), so it cannot be searched: use words its captions use")
        with self.text_lock:
            query_emb = self.vse.encode_text([text])
        results = self._ranked(gallery, "text", text, query_emb, k)
        for entry in results["results"]:
            entry["url"] = self.urls.get(entry["path"])
        words = sorted({token for token in unknown if any(char.isalnum() for char in token)})  # not punctuation
        return {**results, "unknown_words": words}

    def gallery_page(self, offset: str | int | None, limit: str | int | None) -> dict:
        """A page of gallery images to pick a query from."""
        gallery = self._gallery("images", "this gallery has no images to pick")
        start = _integer(offset, "offset", default=0, low=0, high=max(gallery.size - 1, 0))
        count = _integer(limit, "limit", default=GALLERY_PAGE, low=1, high=500)
        images = [{"position": position, "path": gallery.labels[position], "url": self.urls.get(gallery.labels[position])}
                  for position in range(start, min(start + count, gallery.size))]
        return {"total": gallery.size, "offset": start, "images": images}

    def similar(self, position: str | int | None, k: str | int | None) -> dict:
        """Captions for a gallery image (its stored embedding; its own captions are marked)."""
        images = self._gallery("images", "this gallery has no images to pick")
        row = _integer(position, "image", default=None, low=0, high=images.size - 1)
        path = images.labels[row]
        results = self._captions_for(images.emb[row:row + 1], path, k)
        for entry in results["results"]:
            entry["own"] = entry.get("image") == path
        return {**results, "query_url": self.urls.get(path)}

    def upload_search(self, data: bytes, k: str | int | None) -> dict:
        """Captions for an uploaded image (decoded safely, embedded as extract's center crop)."""
        self._gallery("captions", "image search needs caption embeddings (a store split or `encode --texts`)")
        image = decode_upload(data, max_pixels=self.cfg.max_pixels)
        try:
            query_emb = self.vse.encode_images([image])
        except (ValueError, FileNotFoundError) as error:  # e.g. the store's CNN weights are missing
            raise QueryError(f"the image could not be embedded: {error}") from error
        return self._captions_for(query_emb, f"uploaded image ({image.width} x {image.height})", k)

    # -- helpers ----------------------------------------------------------------------------------
    def _captions_for(self, query_emb: torch.Tensor, label: str, k: str | int | None) -> dict:
        gallery = self._gallery("captions", "image search needs caption embeddings (a store split or `encode "
                                            "--texts`)")
        results = self._ranked(gallery, "image", label, query_emb, k)
        for entry in results["results"]:
            entry["url"] = self.urls.get(entry.get("image", ""))
        return results

    def _ranked(self, gallery: Gallery, kind: str, label: str, query_emb: torch.Tensor, k: str | int | None) -> dict:
        """The exact top k of one query by the search stage's engine (eval's top-k, the model's similarity)."""
        count, note = self._k(k, gallery)
        sim_fn = swap_sim(self.sim) if gallery.group == "images" else self.sim
        scores, positions = exact_topk(query_emb, [gallery.emb], count, sim_fn=sim_fn)
        return {**gallery.results(kind, [label], scores.numpy(), positions.numpy())[0], "k_note": note}

    def _gallery(self, group: str, missing: str) -> Gallery:
        if group not in self.galleries:
            raise QueryError(missing)
        return self.galleries[group]

    def _k(self, k: str | int | None, gallery: Gallery) -> tuple[int, str]:
        """(results to list, a note when fewer than asked): k of 1..MAX_K, at most the gallery's size, as faiss
        returns what there is."""
        asked = _integer(k, "k", default=self.cfg.k, low=1, high=MAX_K)
        if asked <= gallery.size:
            return asked, ""
        return gallery.size, f"{asked} asked; the gallery holds {gallery.size} {gallery.group}, all listed"


def _integer(value: str | int | None, name: str, *, default: int | None, low: int, high: int) -> int:
    """A request parameter as an int in [low, high]; QueryError naming it otherwise. Only ASCII digits count:
    str.isdigit also accepts "²" and "١", which int() then refuses or reads, and a 5,000-digit number is past
    int()'s limit."""
    if value is None or value == "":
        if default is None:
            raise QueryError(f"{name} is missing")
        return default
    text = str(value).strip()
    if not _WHOLE.fullmatch(text) or not low <= int(text) <= high:
        raise QueryError(f"{name} must be a whole number from {low} to {high}, got {_cut(text)!r}")
    return int(text)


def _cut(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
