"""Real English text for calibration and evaluation: Wikipedia articles, cleaned and split by article.

Source: the gensim wheel's shortened English Wikipedia dump (:data:`measure.data.benchmarks.WIKI_DUMP`). Cleaning
keeps article prose (namespace 0, no redirects) and removes wiki markup: comments, ``<ref>`` notes,
templates ``{{…}}``, tables ``{|…|}``, file/category links, HTML tags; ``[[target|label]]`` becomes
``label``, headings become their title lines. Articles shorter than :data:`MIN_ARTICLE_CHARS` are
dropped.

The cleaned articles are stored once under a name keyed by the dump and the code that cleans it
(:func:`measure.records.cache_key.derived_name`), so an edit of the cleaner writes a new file. The texts are the
data sources ``text:<name>`` of :data:`TEXTS`: a computation that reads one is keyed by its content hash.

Split (deterministic, documented): in dump order, article ``i`` goes to the *evaluation* text when
``i % EVAL_EVERY == EVAL_EVERY - 1`` and to the *calibration* text otherwise; the two sets of articles
are disjoint. Articles are joined with blank lines (``"\\n\\n"``).
"""

from __future__ import annotations

import bz2
import hashlib
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from measure.data.benchmarks import WIKI_DUMP, wiki_dump_path
from measure.models.fetch import cache_root
from measure.records.atomic import write_text_atomic
from measure.records.cache_key import data_source, derived_name, note_read
from theory.errors import choose

EVAL_EVERY = 4
MIN_ARTICLE_CHARS = 500

_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")
_FILE_LINK = re.compile(
    r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]"
)
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXTERNAL = re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"'{2,}")
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Article:
    title: str
    text: str


def _strip_nested(text: str, opening: str, closing: str) -> str:
    """Remove balanced, possibly nested ``opening … closing`` spans (templates, tables)."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(text):
        if text.startswith(opening, i):
            depth += 1
            i += len(opening)
        elif depth and text.startswith(closing, i):
            depth -= 1
            i += len(closing)
        else:
            if depth == 0:
                out.append(text[i])
            i += 1
    return "".join(out)


def clean_wikitext(markup: str) -> str:
    """Plain prose from MediaWiki markup (see the module docstring for the rules)."""
    text = _COMMENT.sub("", markup)
    text = _REF.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    text = _LIST_MARK.sub("", text)
    text = text.replace("&nbsp;", " ").replace("&ndash;", "–").replace("&mdash;", "—")
    text = _SPACES.sub(" ", text)
    lines = [line.strip() for line in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def iter_dump_pages(path: str) -> Iterator[tuple[str, int, str]]:
    """Yield ``(title, namespace, wikitext)`` for every page of a MediaWiki XML dump (bz2)."""
    with bz2.open(path, "rb") as stream:
        for _, element in ElementTree.iterparse(stream, events=("end",)):
            if not element.tag.endswith("}page"):
                continue
            namespace = element.tag[: -len("page")]
            title = element.findtext(f"{namespace}title") or ""
            ns = int(element.findtext(f"{namespace}ns") or 0)
            wikitext = element.findtext(f"{namespace}revision/{namespace}text") or ""
            yield title, ns, wikitext
            element.clear()



def clean_articles(dump: Path) -> list[Article]:
    """The article prose of the dump ``dump`` in dump order (see the module docstring for the rules)."""
    articles = []
    for title, ns, wikitext in iter_dump_pages(str(dump)):
        if ns != 0 or wikitext.lstrip().upper().startswith("#REDIRECT"):
            continue
        text = clean_wikitext(wikitext)
        if len(text) >= MIN_ARTICLE_CHARS:
            articles.append(Article(title, f"{title}\n\n{text}"))
    return articles


def articles_path() -> Path:
    """The JSON file of the cleaned articles, named by the dump's sha256 and the code of :func:`clean_articles`."""
    return cache_root() / "text" / f"{derived_name('wiki_articles', clean_articles, WIKI_DUMP.sha256)}.json"


@lru_cache(maxsize=1)
def wiki_articles() -> tuple[Article, ...]:
    """All cleaned articles in dump order (cached as JSON after the first parse)."""
    cache_file = articles_path()
    if cache_file.exists():
        return tuple(Article(**row) for row in json.loads(cache_file.read_text()))
    articles = clean_articles(wiki_dump_path())
    write_text_atomic(cache_file, json.dumps([a.__dict__ for a in articles]))
    return tuple(articles)


def split_articles(split: str) -> tuple[Article, ...]:
    """The calibration or evaluation articles (disjoint; see the module docstring)."""
    choose("text split", split, ("calibration", "evaluation"))
    is_eval = split == "evaluation"
    return tuple(
        a for i, a in enumerate(wiki_articles()) if (i % EVAL_EVERY == EVAL_EVERY - 1) == is_eval
    )


def text_source(name: str) -> str:
    """The data source name of the text called ``name``: ``text:<name>``."""
    return f"text:{name}"


def calibration_text() -> str:
    """Calibration text: the calibration articles joined by blank lines."""
    note_read(text_source("wikipedia-calibration"))
    return "\n\n".join(a.text for a in split_articles("calibration"))


def evaluation_text() -> str:
    """Held-out evaluation text: the evaluation articles joined by blank lines."""
    note_read(text_source("wikipedia-evaluation"))
    return "\n\n".join(a.text for a in split_articles("evaluation"))


def text_hash(text: str) -> str:
    """Short sha256 of a text, recorded in protocols so results name the exact text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


TEXTS: dict[str, Callable[[], str]] = {
    "wikipedia-calibration": lambda: calibration_text(),
    "wikipedia-evaluation": lambda: evaluation_text(),
}
"""The texts a protocol may name, by the name recorded in its provenance."""


def text_sha256(name: str) -> str:
    """Content hash of the text called ``name`` (one of :data:`TEXTS`), the digest of its data source."""
    return text_hash(TEXTS[choose("text", name, TEXTS)]())


def named_text(name: str) -> str:
    """The text called ``name`` (one of :data:`TEXTS`); a read of the data source ``text:<name>``."""
    text = TEXTS[choose("text", name, TEXTS)]()
    note_read(text_source(name))
    return text


for _name in TEXTS:
    data_source(text_source(_name), partial(text_sha256, _name))
