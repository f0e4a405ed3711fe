"""Wikipedia text: cleaning rules and a deterministic, disjoint calibration/evaluation split."""

from __future__ import annotations

from measure.data import text


def test_clean_wikitext_rules() -> None:
    markup = (
        "'''Alan''' was {{Infobox|born={{date|1912}}}} a [[mathematician|logician]] and [[computer]]"
        "<ref>Some source</ref>.<!-- hidden -->\n== Life ==\n* Item [http://x.org link text]\n"
        "[[File:Alan.jpg|thumb|A [[photo]]]]\n{| class=wikitable\n| cell\n|}"
    )
    cleaned = text.clean_wikitext(markup)
    assert cleaned.startswith("Alan was a logician and computer.")
    for residue in ("{{", "}}", "[[", "]]", "<ref", "hidden", "'''", "==", "File:", "cell"):
        assert residue not in cleaned
    assert "Life" in cleaned and "Item link text" in cleaned


def test_split_is_disjoint_deterministic_and_covers_all_articles() -> None:
    articles = text.wiki_articles()
    calibration = text.split_articles("calibration")
    evaluation = text.split_articles("evaluation")
    assert len(articles) > 90
    assert {a.title for a in calibration}.isdisjoint({a.title for a in evaluation})
    assert len(calibration) + len(evaluation) == len(articles)
    assert [a.title for a in evaluation] == [a.title for i, a in enumerate(articles) if i % text.EVAL_EVERY == 3]
    assert len(text.evaluation_text()) > 300_000
    assert text.text_hash(text.evaluation_text()) == "2090afde01891f7e"  # the cleaner on the gensim dump


def test_text_hash_is_the_first_16_hex_digits_of_sha256() -> None:
    assert text.text_hash("abc") == "ba7816bf8f01cfea"  # FIPS 180-2, Appendix B.1: SHA-256("abc")
