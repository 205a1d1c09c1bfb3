"""Captions for SynthFace images: ``"a photo of a person with red hair, smiling, wearing glasses, ..."``."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .render import ATTRIBUTES, check_attributes

PHRASES = {
    "hair": lambda v: f"with {v} hair",
    "expression": lambda v: {"neutral": "with a neutral expression", "smiling": "smiling", "surprised": "looking surprised"}[v],
    "glasses": lambda v: "wearing glasses" if v else "without glasses",
    "hat": lambda v: "wearing a hat" if v else "without a hat",
    "beard": lambda v: "with a beard" if v else "clean-shaven",
    "background": lambda v: f"on a {v} background",
}
DEFAULT_SUBJECT = "a person"


def phrase(name: str, value) -> str:
    return PHRASES[name](value)


def caption(attrs: dict, subject: str = DEFAULT_SUBJECT, mention: Iterable[str] | None = None) -> str:
    """A caption naming ``mention`` attributes (all by default), in a fixed order."""
    attrs = check_attributes(attrs)
    names = list(ATTRIBUTES) if mention is None else [n for n in ATTRIBUTES if n in set(mention)]
    parts = [phrase(n, attrs[n]) for n in names]
    return f"a photo of {subject}" + (", " + ", ".join(parts) if parts else "")


def random_mention(rng: np.random.Generator, p: float = 0.8) -> list[str]:
    """Which attributes a training caption names: each with probability ``p``."""
    return [n for n in ATTRIBUTES if rng.random() < p]


def parse_caption(text: str) -> dict:
    """The attributes a caption asks for (inverse of :func:`caption`, used to judge prompt adherence)."""
    text = text.lower()
    asked = {}
    for name, values in ATTRIBUTES.items():
        for v in values:
            if phrase(name, v) in text:
                asked[name] = v
    return asked
