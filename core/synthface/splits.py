"""Fixed identity splits and held-out attribute combinations.

Identities: ``id % 20`` < 16 train, 16-17 validation, 18-19 held-out. Nothing trains on validation/held-out
identities: training samplers call :func:`require_split` and refuse them. 10% of the 576 full attribute
combinations are held out of base-model training captions, so prompt adherence is measured on unseen combinations.
"""
from __future__ import annotations

import hashlib
import itertools

from .render import ATTRIBUTES, IDENTITY_COUNT

SPLITS = ("train", "val", "heldout")


def split_of(identity: int) -> str:
    h = int(identity) % 20
    return "train" if h < 16 else ("val" if h < 18 else "heldout")


def identities(split: str) -> list[int]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [i for i in range(IDENTITY_COUNT) if split_of(i) == split]


def require_split(identity: int, split: str) -> None:
    if split_of(identity) != split:
        raise ValueError(f"identity {identity} belongs to split {split_of(identity)!r}, not {split!r}")


def combo_key(attrs: dict) -> str:
    return "|".join(f"{k}={attrs[k]}" for k in ATTRIBUTES)


def is_heldout_combo(attrs: dict) -> bool:
    """True for the ~10% of full attribute combinations that base-model training never sees."""
    digest = hashlib.sha256(combo_key(attrs).encode()).digest()
    return digest[0] < 26  # 26/256 ~ 10%


def all_combos() -> list[dict]:
    return [dict(zip(ATTRIBUTES, vals)) for vals in itertools.product(*ATTRIBUTES.values())]


def heldout_combos() -> list[dict]:
    return [c for c in all_combos() if is_heldout_combo(c)]
