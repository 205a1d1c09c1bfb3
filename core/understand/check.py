"""Checking what a face shows against what a prompt asked for, and the attribute table image.

``read_attributes`` gives per image ``{type: {"value", "answer", "confidence", "low_confidence"}}`` (either backend);
``check_attributes`` compares it with the attributes and identity traits a prompt names (SynthFace caption
phrases, ``captions.parse_caption`` / ``parse_identity``): pass only when every asked one is seen with enough
confidence; each reason names the attribute, what was asked, what was seen and how sure. ``check_unchanged`` checks
an edit's other side: the attributes not asked keep the source's values.
"""
from __future__ import annotations

import numpy as np

from ..synthface.captions import parse_caption, parse_identity
from .questions import PHRASINGS, TYPES, answer_value, answer_word


def requested(prompt: str) -> dict:
    """The attributes and identity traits a prompt names, as label values."""
    return {**parse_identity(prompt), **parse_caption(prompt)}


def read_attributes(understander, images, types: list[str] | None = None) -> list[dict]:
    """Attributes with confidences from either backend (the unified model scores every answer; a VLM answers the
    canonical question and reports its own probability)."""
    types = list(types or TYPES)
    if hasattr(understander, "attributes"):
        return understander.attributes(images, types)
    n = len(np.asarray(images)) if np.asarray(images).ndim == 4 else 1
    out = [dict() for _ in range(n)]
    for t in types:
        for i, a in enumerate(understander.answer(images, PHRASINGS[t][0])):
            value = answer_value(t, a.text)
            out[i][t] = {"value": value, "answer": a.text, "confidence": round(float(a.confidence), 4),
                         "low_confidence": bool(a.low_confidence or value is None)}
    return out


def confident_values(understander, image, types: list[str], min_confidence: float = 0.5) -> dict:
    """``{type: value}`` for each of ``types`` the face model reads on ONE image with at least ``min_confidence``
    (and not marked low-confidence)."""
    seen = read_attributes(understander, image, types)[0]
    return {t: seen[t]["value"] for t in types if seen[t]["value"] is not None
            and seen[t]["confidence"] >= min_confidence and not seen[t]["low_confidence"]}


def tuning_caption(understander, image, subject: str = "{token}", min_confidence: float = 0.5) -> str:
    """A caption of ONE reference photo naming the attributes (hair colour, expression, glasses, hat, beard,
    background) the face model reads with at least ``min_confidence``: ``"a photo of {token}, with red hair,
    wearing glasses, ..."``. Tuning a concept on it leaves those to the words, so the concept token learns the
    person rather than this photo's hair, glasses or hat (measured in the E4T README)."""
    from ..synthface.render import ATTRIBUTES

    return _caption_of(confident_values(understander, image, list(ATTRIBUTES), min_confidence), subject)


def identity_words(understander, image, min_confidence: float = 0.5) -> str:
    """Words for who the person in ONE photo is, in the identity vocabulary (``"olive skin, oval face, ..."``):
    each identity trait the face model reads with at least ``min_confidence``, except those not visible at the
    world's resolution (``NOT_VISIBLE``). Put after the concept token in a prompt, the base draws what the words
    say and the token carries the rest."""
    return _words_of(confident_values(understander, image, _visible_traits(), min_confidence))


def caption_and_words(understander, image, subject: str = "{token}", min_confidence: float = 0.5) -> tuple[str, str]:
    """``(tuning_caption, identity_words)`` of ONE photo from a single reading of it (what a concept made with a
    face model needs: Embed Concept)."""
    from ..synthface.render import ATTRIBUTES

    attrs, traits = list(ATTRIBUTES), _visible_traits()
    sure = confident_values(understander, image, attrs + traits, min_confidence)
    return (_caption_of({t: sure[t] for t in attrs if t in sure}, subject),
            _words_of({t: sure[t] for t in traits if t in sure}))


def _visible_traits() -> list[str]:
    from .questions import NOT_VISIBLE, TRAIT_TYPES

    return [t for t in TRAIT_TYPES if t not in NOT_VISIBLE]


def _caption_of(sure: dict, subject: str) -> str:
    from ..synthface.captions import caption
    from ..synthface.render import random_attributes

    filler = random_attributes(np.random.default_rng(0))  # values for what was not read; never named
    return caption({**filler, **sure}, subject=subject, mention=list(sure))


def _words_of(sure: dict) -> str:
    from ..synthface.captions import describe_identity

    return describe_identity(sure, mention=list(sure))


def merged_words(lines) -> str:
    """One description from the identity words of several photos of ONE person (one line each, e.g. Face Describe's
    ``identity_words`` of a batch): each trait the lines name takes its most common value (ties: the first line's
    order). Lines with words outside the SynthFace identity vocabulary (typed by a user for a real base) are not
    merged: the first non-empty line is used as it is."""
    from collections import Counter

    from ..concept.tokens import clean_words
    from ..synthface.captions import describe_identity, parse_identity

    lines = [clean_words(x) for x in (lines.splitlines() if isinstance(lines, str) else lines)]
    lines = [x for x in lines if x]
    if len(lines) <= 1 or len(set(lines)) == 1:
        return lines[0] if lines else ""
    parsed = [parse_identity(x) for x in lines]
    if any(len(p) != len([w for w in x.split(",") if w.strip()]) for p, x in zip(parsed, lines)):
        return lines[0]
    votes: dict[str, Counter] = {}
    for p in parsed:
        for t, v in p.items():
            votes.setdefault(t, Counter())[v] += 1
    merged = {t: c.most_common(1)[0][0] for t, c in votes.items()}
    return describe_identity(merged, mention=list(merged))


def _word(t: str, v) -> str:
    return answer_word(t, v) if v is not None else "?"


def _problem(got: dict | None, want, min_confidence: float) -> str | None:
    """What stops one reading from verifying the value ``want``: "unread", "differs", "unsure", or None."""
    if got is None:
        return "unread"
    if got["value"] != want:
        return "differs"
    if got["confidence"] < min_confidence or got["low_confidence"]:
        return "unsure"
    return None


def _image_problems(seen: list[dict], wants: dict, min_confidence: float, say) -> list[list[str]]:
    """Per image, one line per attribute whose reading does not verify its wanted value: ``say(problem, t, got)``
    words it (``problem`` from ``_problem``). The one loop of the asked-attribute and unchanged-attribute checks."""
    out = []
    for i, s in enumerate(seen):
        lines = []
        for t, want in wants.items():
            problem = _problem(s.get(t), want, min_confidence)
            if problem is not None:
                lines.append(f"image {i + 1}: " + say(problem, t, s.get(t)))
        out.append(lines)
    return out


def check_attributes(seen: list[dict], asked: dict, min_confidence: float = 0.5) -> tuple[bool, list[str]]:
    """(all images show every asked attribute confidently, reasons: one line per image and problem)."""
    if not asked:
        return False, ["the prompt names no attribute or identity trait FaceSmith can check"]

    def say(problem, t, got):
        if problem == "unread":
            return f"{t} was not read"
        if problem == "differs":
            return f"{t} asked {_word(t, asked[t])!r}, seen {got['answer']!r} (confidence {got['confidence']:.2f})"
        return (f"{t} looks {got['answer']!r} as asked, but only with confidence {got['confidence']:.2f} "
                f"(< {min_confidence:.2f}): not verified")

    ok, reasons = True, []
    for i, lines in enumerate(_image_problems(seen, asked, min_confidence, say)):
        reasons += lines
        ok = ok and not lines
        if ok:
            reasons.append(f"image {i + 1}: all {len(asked)} asked attributes seen")
    return ok, reasons


def check_unchanged(seen: list[dict], source: dict, asked: dict, min_confidence: float = 0.5) -> tuple[bool, list[str]]:
    """For an edit: (every image keeps the source's value of each attribute the prompt does not ask to change,
    reasons). Only the editable attributes (hair, expression, glasses, hat, beard, background) are compared, and only
    those read on the source with at least ``min_confidence``; a result that reads otherwise fails (an unasked
    change), and one read too unsurely to tell is not verified."""
    from ..synthface.render import ATTRIBUTES

    sure = {t: r for t, r in source.items() if t in ATTRIBUTES and t not in asked and r.get("value") is not None
            and _problem(r, r["value"], min_confidence) is None}

    def say(problem, t, got):
        if problem == "unread":
            return f"{t} was not read, so not verified unchanged"
        if problem == "differs":
            return (f"{t} changed without being asked: {sure[t]['answer']!r} on the source, seen {got['answer']!r} "
                    f"(confidence {got['confidence']:.2f})")
        return (f"{t} looks unchanged ({got['answer']!r}), but only with confidence {got['confidence']:.2f} "
                f"(< {min_confidence:.2f}): not verified")

    ok, reasons = True, []
    for i, lines in enumerate(_image_problems(seen, {t: r["value"] for t, r in sure.items()}, min_confidence, say)):
        reasons += lines
        ok = ok and not lines
        if not lines:
            reasons.append(f"image {i + 1}: the {len(sure)} attribute{'s' if len(sure) != 1 else ''} not asked "
                           "kept the source's values")
    return ok, reasons


def attribute_table(seen: dict, width: int = 360, row: int = 16) -> np.ndarray:
    """One image's attributes as a table image (uint8 HxWx3): type, answer, confidence bar; low confidence in red."""
    from PIL import Image, ImageDraw

    h = row * (len(seen) + 1) + 8
    img = Image.new("RGB", (width, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((6, 4), "attribute", fill=(0, 0, 0))
    d.text((120, 4), "answer", fill=(0, 0, 0))
    d.text((250, 4), "confidence", fill=(0, 0, 0))
    for k, (t, v) in enumerate(seen.items(), 1):
        y = 4 + k * row
        colour = (190, 30, 30) if v["low_confidence"] else (20, 20, 20)
        d.text((6, y), t, fill=colour)
        d.text((120, y), str(v["answer"]), fill=colour)
        c = float(v["confidence"])
        d.rectangle([250, y + 3, 250 + int(70 * c), y + row - 4], fill=(200, 80, 80) if v["low_confidence"]
                    else (80, 150, 220))
        d.text((324, y), f"{c:.2f}", fill=colour)
    return np.asarray(img)
