"""Text for the synthetic speakers: random sentences from small word lists and templates."""
from __future__ import annotations

import numpy as np

_WORDS = {
    "det": "the a this that every one some my your our their another".split(),
    "adj": (
        "old young happy quiet bright dark green small large heavy quick gentle strange early late warm cold "
        "silver wooden busy lonely famous careful simple hidden golden narrow"
    ).split(),
    "noun": (
        "farmer teacher river garden window city doctor letter market mountain village student island horse "
        "kitchen story engine painter bridge forest captain station morning picture sailor engineer table "
        "museum orchestra neighbour harbour ticket"
    ).split(),
    "verb": (
        "found carried painted opened watched remembered built followed visited described moved cleaned "
        "borrowed discovered answered repaired measured ordered noticed delivered"
    ).split(),
    "prep": "near behind across under beside beyond inside around before after".split(),
    "adv": "quickly slowly quietly suddenly carefully yesterday again finally often never".split(),
    "intro": "well so today meanwhile however honestly later perhaps".split(),
}


_TEMPLATES = (
    "det adj noun verb det noun prep det noun",
    "det noun adv verb det adj noun",
    "intro , det noun verb det noun prep det adj noun",
    "det adj noun prep det noun verb adv",
    "det noun verb det adj adj noun , intro",
    "did det noun verb det noun prep det noun ?",
)


def sentence(rng: np.random.Generator) -> str:
    """One random sentence (a template filled from the word lists), capitalised and punctuated."""
    words = [str(rng.choice(_WORDS[tok])) if tok in _WORDS else tok for tok in rng.choice(_TEMPLATES).split()]
    text = " ".join(words).replace(" ,", ",").replace(" ?", "?")
    return text[0].upper() + text[1:] + ("" if text.endswith("?") else ".")


def speech_text(rng: np.random.Generator, seconds: float, rate: float) -> str:
    """Sentences with comfortably more words than ``seconds`` of speech at ``rate`` words per minute."""
    sentences: list[str] = []
    while sum(len(s.split()) for s in sentences) < 1.4 * seconds * rate / 60 + 3:
        sentences.append(sentence(rng))
    return " ".join(sentences)
