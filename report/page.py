"""The report's index.html: one self-contained page (inline CSS, no script) that links the PNGs beside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape

from report.examples import Example

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 48px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
nav a { margin-right: 14px; } .meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; border: 1px solid #eee; }
.query { margin: 10px 0 18px; padding: 8px 10px; background: #fafafa; border: 1px solid #eee; border-radius: 6px; }
.query-text { font-weight: 600; } .rank { color: #555; font-size: 0.9em; margin-left: 8px; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; margin-top: 6px; }
.row > div { flex: 1 1 420px; }
figure { margin: 0; width: 168px; font-size: 0.8em; text-align: center; }
figure img { width: 160px; height: 160px; object-fit: contain; background: #eee; border: 4px solid transparent; }
figure.right img { border-color: #1a9e3a; } figure.right figcaption { color: #137a2c; font-weight: 600; }
figure.beaten img { border-color: #c0392b; }
.sep { align-self: center; color: #888; font-size: 0.85em; padding: 0 6px; }
ol.captions { margin: 4px 0; padding-left: 1.6em; } ol.captions li.right { color: #137a2c; font-weight: 600; }
.score { font-variant-numeric: tabular-nums; color: #555; }
.note { color: #555; font-size: 0.9em; max-width: 80ch; }
bdi { unicode-bidi: isolate; }
"""


@dataclass
class ReportPage:
    """What index.html shows; every text is escaped when rendered."""

    title: str
    meta: list[str]
    summary: list[tuple[str, dict[str, float]]]  # (row name, metrics) for the recall table
    config: dict
    image_labels: list[str]  # image paths of the split
    caption_texts: list[str]
    thumb: Callable[[int], str]  # image position -> thumbnail src
    training_png: str | None = None
    training_note: str = ""
    recall_png: str | None = None
    sampled_captions: list[Example] = field(default_factory=list)
    sampled_images: list[Example] = field(default_factory=list)
    worst_captions: list[Example] = field(default_factory=list)
    worst_images: list[Example] = field(default_factory=list)
    ablation_png: str | None = None
    ablation_rows: list[dict] = field(default_factory=list)
    ablation_source: str = ""

    def render(self) -> str:
        sections = [("training", "Training curves", self._training()), ("recall", "Recall@K", self._recall()),
                    ("config", "Config", self._config()), ("captions", "Caption queries", self._captions()),
                    ("images", "Image queries", self._images()), ("worst", "Worst queries", self._worst()),
                    ("ablation", "Ablation", self._ablation())]
        sections = [(key, title, body) for key, title, body in sections if body]
        nav = " ".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections)
        body = "\n".join(f'<section id="{key}"><h2>{escape(title)}</h2>\n{content}</section>'
                         for key, title, content in sections)
        meta = "".join(f"<div>{_text(line)}</div>" for line in self.meta)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(self.title)}</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<style>{STYLE}</style></head>\n<body><h1>{_text(self.title)}</h1><div class=\"meta\">{meta}</div>"
                f"<nav>{nav}</nav>\n{body}\n</body></html>\n")

    # -- panels ------------------------------------------------------------------------------------
    def _training(self) -> str:
        if not self.training_png:
            return f'<p class="note">{escape(self.training_note)}</p>' if self.training_note else ""
        return (f'<p class="note">{escape(self.training_note)}</p>'
                f'<img class="plot" src="{escape(self.training_png)}" alt="training curves">')

    def _recall(self) -> str:
        if not self.recall_png:
            return ""
        keys = ("r1", "r5", "r10", "medr")
        head = "".join(f"<th>{d} {'R@' + k[1:] if k.startswith('r') else k}</th>" for d in ("i2t", "t2i") for k in keys)
        rows = "".join(f"<tr><td>{escape(name)}</td>" + "".join(
            f'<td class="num">{_number(values.get(f"{d}_{k}"))}</td>' for d in ("i2t", "t2i") for k in keys)
            + f'<td class="num">{_number(values.get("rsum"))}</td></tr>' for name, values in self.summary)
        return (f"<table><tr><th></th>{head}<th>rsum</th></tr>{rows}</table>"
                '<p class="note">i2t = caption retrieval (an image is the query; its rank is the best rank of any of its '
                "captions), t2i = image retrieval (a caption is the query). Ties count against the query, as in eval. "
                "The dashed lines are a random ranking's recall.</p>"
                f'<img class="plot" src="{escape(self.recall_png)}" alt="Recall@K curves">')

    def _config(self) -> str:
        if not self.config:
            return ""
        rows = "".join(f"<tr><th>{_text(str(key))}</th><td>{_text(_value(value))}</td></tr>"
                       for key, value in self.config.items())
        return f'<p class="note">The run\'s resolved config.json.</p><table>{rows}</table>'

    def _captions(self) -> str:
        if not self.sampled_captions:
            return ""
        intro = ('<p class="note">Captions drawn at random from the split, each with its top images; the right image '
                 "has a green frame (shown after the list when it ranks lower).</p>")
        return intro + "".join(self._caption_query(example) for example in self.sampled_captions)

    def _images(self) -> str:
        if not self.sampled_images:
            return ""
        intro = ('<p class="note">Images drawn at random from the split, each with its top captions; the image\'s own '
                 "captions are green and ticked.</p>")
        return intro + "".join(self._image_query(example) for example in self.sampled_images)

    def _worst(self) -> str:
        if not self.recall_png:
            return ""
        captions = "".join(self._caption_query(example, beaten=True) for example in self.worst_captions)
        images = "".join(self._image_query(example, beaten=True) for example in self.worst_images)
        return ('<p class="note">The queries whose right answer ranks lowest (queries that rank it first are left '
                "out), with what beat it: the hard negatives, red frames, best first.</p>"
                "<h3>Caption queries: images that beat the right one</h3>"
                + (captions or '<p class="note">Every caption query ranks its image first.</p>')
                + "<h3>Image queries: captions of other images that beat its own</h3>"
                + (images or '<p class="note">Every image query ranks one of its captions first.</p>'))

    def _ablation(self) -> str:
        if not self.ablation_png:
            return ""
        keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "best_val_rsum", "seconds")
        head = "".join(f"<th>{key}</th>" for key in ("run", "loss", "image", "text") + keys)
        rows = "".join("<tr>" + "".join(f"<td>{_text(str(row.get(key, '')))}</td>"
                                        for key in ("name", "loss", "image_features", "text_pool"))
                       + "".join(f'<td class="num">{_number(row.get(key))}</td>' for key in keys) + "</tr>"
                       for row in self.ablation_rows)
        return (f'<p class="note">From {_text(self.ablation_source)}: every run of the grid with one seed and budget, '
                "tested on its test split.</p>"
                f'<img class="plot" src="{escape(self.ablation_png)}" alt="ablation bar chart"><table><tr>{head}</tr>'
                f"{rows}</table>")

    # -- one query ---------------------------------------------------------------------------------
    def _figure(self, image: int, caption: str, css: str) -> str:
        label = escape(self.image_labels[image])
        return (f'<figure class="{css}"><img src="{escape(self.thumb(image))}" alt="{label}" title="{label}">'
                f"<figcaption>{caption}</figcaption></figure>")

    def _caption_query(self, example: Example, *, beaten: bool = False) -> str:
        figures = []
        for position, hit in enumerate(example.hits, start=1):
            mark = "&#10003; right image, " if hit.right else ""
            css = "right" if hit.right else ("beaten" if beaten else "")
            figures.append(self._figure(hit.row, f"{mark}#{position} &middot; {hit.score:.3f}", css))
        if not any(hit.right for hit in example.hits):
            figures.append('<span class="sep">right image:</span>' + self._figure(
                example.right_row, f"&#10003; rank {example.rank} &middot; {example.right_score:.3f}", "right"))
        text = _text(self.caption_texts[example.query])
        shown = f"; {_beaten(len(example.hits), example.rank - 1, 'image')} beat it" if beaten else ""
        return (f'<div class="query"><span class="query-text">&ldquo;{text}&rdquo;</span>'
                f'<span class="rank">right image at rank {example.rank}{shown}</span>'
                f'<div class="row">{"".join(figures)}</div></div>')

    def _image_query(self, example: Example, *, beaten: bool = False) -> str:
        items = []
        for hit in example.hits:
            mark = "&#10003; " if hit.right else ""
            items.append(f'<li class="{"right" if hit.right else ""}">{mark}{_text(self.caption_texts[hit.row])} '
                         f'<span class="score">{hit.score:.3f}</span></li>')
        own = ""
        if not any(hit.right for hit in example.hits):
            own = (f'<div>its best own caption, rank {example.rank}: <span class="score">{example.right_score:.3f}'
                   f"</span> <b>&#10003; {_text(self.caption_texts[example.right_row])}</b></div>")
        heading = (f"{_beaten(len(example.hits), example.rank - 1, 'caption')} of other images beat its own" if beaten
                   else f"top {len(example.hits)} captions")
        figure = self._figure(example.query, _text(self.image_labels[example.query]), "")
        return (f'<div class="query"><div class="row">{figure}'
                f'<div><span class="rank">best own caption at rank {example.rank}; {heading}:</span>'
                f'<ol class="captions">{"".join(items)}</ol>{own}</div></div></div>')


def _beaten(shown: int, total: int, noun: str) -> str:
    """"the 3 captions" / "the 5 best of the 12 captions" (those listed of those that ranked above the right one)."""
    nouns = noun if total == 1 else noun + "s"
    return f"{total} {nouns}" if shown == total else f"the {shown} best of the {total} {nouns}"


def _text(value: str) -> str:
    """A text of the data (caption, path, config value) escaped and isolated: a bidi override inside it (U+202E)
    cannot reorder the score or text that follows it."""
    return f"<bdi>{escape(value)}</bdi>"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if isinstance(value, float) else escape(str(value))


def _value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
