"""Editing triplets: a source image, an instruction with image references, and the exactly rendered target."""
from __future__ import annotations

import numpy as np

from .captions import phrase
from .render import ATTRIBUTES, check_attributes, random_attributes, render


def edit_triplet(rng: np.random.Generator, ids: list[int], size: int = 64) -> dict:
    """One triplet. Kinds: text edit ("make <image1> ...") or reference edit ("give <image1> the hat of <image2>").

    Returns {"source", "references": [...], "instruction", "target", "labels"} with uint8 images.
    """
    a, b = (int(x) for x in rng.choice(ids, 2, replace=False))
    view = int(rng.integers(1 << 30))
    src_attrs = random_attributes(rng)
    name = str(rng.choice(["hair", "expression", "glasses", "hat", "beard", "background"]))
    choices = [v for v in ATTRIBUTES[name] if v != src_attrs[name]]
    new = choices[int(rng.integers(len(choices)))]
    tgt_attrs = dict(src_attrs, **{name: new})
    refs = []
    if name in ("hair", "glasses", "hat", "beard") and rng.random() < 0.5 and new is not False:
        ref_attrs = dict(random_attributes(rng), **{name: new})
        refs.append(render(b, ref_attrs, size, view=int(rng.integers(1 << 30))))
        what = {"hair": "hair colour", "glasses": "glasses", "hat": "hat", "beard": "beard"}[name]
        instruction = f"give <image1> the {what} of <image2>"
    else:
        instruction = f"make <image1> {phrase(name, new)}" if name != "expression" else f"make <image1> {new}"
    return {
        "source": render(a, src_attrs, size, view=view), "references": refs, "instruction": instruction,
        "target": render(a, check_attributes(tgt_attrs), size, view=view),
        "labels": {"identity": a, "reference_identity": b if refs else None, "source_attributes": src_attrs,
                   "target_attributes": tgt_attrs, "edited": name},
    }


def views(identity: int, n: int, rng: np.random.Generator, size: int = 64) -> list[tuple[np.ndarray, dict]]:
    """``n`` views of one identity with random attributes and jitter (identity-adapter training)."""
    out = []
    for _ in range(n):
        attrs = random_attributes(rng)
        out.append((render(identity, attrs, size, view=int(rng.integers(1 << 30))), attrs))
    return out
