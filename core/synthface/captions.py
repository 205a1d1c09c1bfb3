"""Captions for SynthFace images.

``"a photo of a person, olive skin, oval face, blue eyes, ..., with red hair, smiling, wearing glasses, ..."``: the
subject, then (optionally) words for who the person is -- one phrase per identity trait, the documented vocabulary
below, so that a prompt can describe a person completely -- then the attributes (hair colour, expression, glasses,
hat, beard, background) in a fixed order.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .render import ATTRIBUTES, TRAIT_NAMES, TRAIT_VOCAB, check_attributes

PHRASES = {
    "hair": lambda v: f"with {v} hair",
    "expression": lambda v: {"neutral": "with a neutral expression", "smiling": "smiling", "surprised": "looking surprised"}[v],
    "glasses": lambda v: "wearing glasses" if v else "without glasses",
    "hat": lambda v: "wearing a hat" if v else "without a hat",
    "beard": lambda v: "with a beard" if v else "clean-shaven",
    "background": lambda v: f"on a {v} background",
}
# One phrase per identity trait value (the identity vocabulary). Every phrase is distinct from every other one and
# from the attribute phrases, so parse_identity can read a description back.
TRAIT_PHRASES: dict[str, dict[str, str]] = {
    "skin_tone": {v: f"{v} skin" for v in TRAIT_VOCAB["skin_tone"]},
    "face_shape": {v: f"{v} face" for v in TRAIT_VOCAB["face_shape"]},
    "eye_colour": {v: f"{v} eyes" for v in TRAIT_VOCAB["eye_colour"]},
    "eye_shape": {"round": "round eyes", "almond": "almond eyes", "narrow": "narrow eyes"},
    "eye_spacing": {"close": "close-set eyes", "average": "evenly spaced eyes", "wide": "wide-set eyes"},
    "brow_weight": {"thin": "thin brows", "thick": "thick brows"},
    "brow_shape": {"flat": "flat brows", "upturned": "upturned brows", "downturned": "downturned brows"},
    "nose_shape": {v: f"{v} nose" for v in TRAIT_VOCAB["nose_shape"]},
    "mouth": {"small": "small mouth", "wide": "wide mouth"},
    "ears": {"small": "small ears", "large": "large ears"},
    "mole": {"none": "no mole", "left_cheek": "mole on left cheek", "right_cheek": "mole on right cheek",
             "chin": "mole on chin", "forehead": "mole on forehead"},
    "hairline": {"high": "high forehead", "low": "low forehead"},
    "hair_style": {"short": "short hairstyle", "long": "long hairstyle", "side_part": "parted hairstyle",
                   "curly": "curly hairstyle", "buzz": "buzz cut", "spiky": "spiky hairstyle"},
}
DEFAULT_SUBJECT = "a person"


def phrase(name: str, value) -> str:
    return PHRASES[name](value)


def describe_identity(facts: dict, mention: Iterable[str] | None = None) -> str:
    """Words for who a person is: ``"olive skin, oval face, ..."`` naming ``mention`` traits (all by default)."""
    names = TRAIT_NAMES if mention is None else [n for n in TRAIT_NAMES if n in set(mention)]
    return ", ".join(TRAIT_PHRASES[n][facts[n]] for n in names)


def caption(attrs: dict, subject: str = DEFAULT_SUBJECT, mention: Iterable[str] | None = None,
            identity: dict | None = None, identity_mention: Iterable[str] | None = None) -> str:
    """A caption: subject, then the ``identity`` facts named in ``identity_mention`` (all when ``identity`` is given
    and ``identity_mention`` is None), then the ``mention`` attributes (all by default), in a fixed order."""
    attrs = check_attributes(attrs)
    names = list(ATTRIBUTES) if mention is None else [n for n in ATTRIBUTES if n in set(mention)]
    parts = [describe_identity(identity, identity_mention)] if identity is not None else []
    parts = [p for p in parts if p] + [phrase(n, attrs[n]) for n in names]
    return f"a photo of {subject}" + (", " + ", ".join(parts) if parts else "")


def random_mention(rng: np.random.Generator, p: float = 0.8, names: Iterable[str] = tuple(ATTRIBUTES)) -> list[str]:
    """Which attributes (or, with ``names=TRAIT_NAMES``, identity traits) a training caption names: each with
    probability ``p``."""
    return [n for n in names if rng.random() < p]


def parse_caption(text: str) -> dict:
    """The attributes a caption asks for (inverse of :func:`caption`, used to judge prompt adherence)."""
    text = text.lower()
    asked = {}
    for name, values in ATTRIBUTES.items():
        for v in values:
            if phrase(name, v) in text:
                asked[name] = v
    return asked


def parse_identity(text: str) -> dict:
    """The identity traits a caption describes (inverse of :func:`describe_identity`)."""
    parts = {p.strip() for p in text.lower().split(",")}
    asked = {}
    for name, phrases in TRAIT_PHRASES.items():
        for v, words in phrases.items():
            if words in parts:
                asked[name] = v
    return asked
