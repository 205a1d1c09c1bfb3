"""Instruction samples with exact targets: a source image, referenced images, an instruction, the rendered target.

Three tasks (MIGE's):

- ``subject_generation``: ``"a photo of <image1>, with red hair, smiling"``; image1 is another render of the person
  (its own attributes, pose, light); the target is that person with the named attributes. No source image.
- ``instruction_edit``: ``"make <image1> smiling"``; image1 is the source; the target is the same render (same view)
  with that one attribute changed.
- ``subject_edit``: ``"give <image1> the glasses of <image2>"``; image1 is the source, image2 another person who has
  the attribute; the target is the source with the attribute taken from image2.
"""
from __future__ import annotations

import numpy as np

from .captions import caption, phrase
from .render import ATTRIBUTES, check_attributes, random_attributes, render

TASKS = ("subject_generation", "instruction_edit", "subject_edit")
EDITABLE = ("hair", "expression", "glasses", "hat", "beard", "background")
TRANSFERABLE = {"hair": "hair colour", "glasses": "glasses", "hat": "hat", "beard": "beard"}


def _view(rng: np.random.Generator) -> int:
    return int(rng.integers(1 << 30))


def _changed(rng: np.random.Generator, attrs: dict, names) -> tuple[str, object]:
    name = str(rng.choice(list(names)))
    choices = [v for v in ATTRIBUTES[name] if v != attrs[name]]
    return name, choices[int(rng.integers(len(choices)))]


def instruct_sample(task: str, rng: np.random.Generator, ids, size: int = 64, mention_p: float = 0.8,
                    identity: int | None = None, draw=render) -> dict:
    """One sample of ``task`` for ``identity`` (or a person drawn from ``ids``); the other person of a subject edit
    is drawn from ``ids``.

    Returns ``{"task", "images": [image1, image2?], "source": image or None, "instruction", "target", "labels"}``
    (uint8 images). ``labels``: ``identity``, ``reference_identity``, ``source_attributes``, ``target_attributes``,
    ``edited`` (the changed attribute, None for subject generation), ``asked`` (what the target must show).

    ``draw(identity, attributes, size, view=...)`` makes each image (default: renders it now). A trainer passes one
    that only records the render job, so that all of a pool's images render later in parallel (the draws of ``rng``
    are the same either way).
    """
    if task not in TASKS:
        raise ValueError(f"unknown instruction task {task!r}; one of {TASKS}")
    a, b = (int(x) for x in rng.choice(ids, 2, replace=False))
    if identity is not None:
        a = int(identity)
        if b == a:
            b = int(next(i for i in ids if int(i) != a))
    if task == "subject_generation":
        ref_attrs, tgt_attrs = random_attributes(rng), random_attributes(rng)
        mention = [n for n in ATTRIBUTES if rng.random() < mention_p]
        ref = draw(a, ref_attrs, size, view=_view(rng))
        return {"task": task, "images": [ref], "source": None,
                "instruction": caption(tgt_attrs, subject="<image1>", mention=mention),
                "target": draw(a, tgt_attrs, size, view=_view(rng)),
                "labels": {"identity": a, "reference_identity": a, "source_attributes": ref_attrs,
                           "target_attributes": tgt_attrs, "edited": None,
                           "asked": {n: tgt_attrs[n] for n in mention}}}
    view = _view(rng)
    src_attrs = random_attributes(rng)
    if task == "subject_edit":
        while True:  # an attribute another person can show (not "without glasses")
            name, new = _changed(rng, src_attrs, TRANSFERABLE)
            if new is not False:
                break
        ref = draw(b, dict(random_attributes(rng), **{name: new}), size, view=_view(rng))
        instruction = f"give <image1> the {TRANSFERABLE[name]} of <image2>"
    else:
        name, new = _changed(rng, src_attrs, EDITABLE)
        instruction = f"make <image1> {phrase(name, new)}" if name != "expression" else f"make <image1> {new}"
        ref = None
    tgt_attrs = check_attributes(dict(src_attrs, **{name: new}))
    source = draw(a, src_attrs, size, view=view)
    images = [source] + ([ref] if ref is not None else [])
    return {"task": task, "images": images, "source": source, "instruction": instruction,
            "target": draw(a, tgt_attrs, size, view=view),
            "labels": {"identity": a, "reference_identity": b if ref is not None else None,
                       "source_attributes": src_attrs, "target_attributes": tgt_attrs, "edited": name,
                       "asked": {name: new}}}


def edit_triplet(rng: np.random.Generator, ids: list[int], size: int = 64) -> dict:
    """One editing triplet, a text edit or (half of the time where the attribute can be shown) a reference edit.

    Returns {"source", "references": [...], "instruction", "target", "labels"} with uint8 images.
    """
    task = "subject_edit" if rng.random() < 0.5 else "instruction_edit"
    s = instruct_sample(task, rng, ids, size)
    return {"source": s["source"], "references": s["images"][1:], "instruction": s["instruction"],
            "target": s["target"], "labels": s["labels"]}


def views(identity: int, n: int, rng: np.random.Generator, size: int = 64) -> list[tuple[np.ndarray, dict]]:
    """``n`` views of one identity with random attributes and jitter (identity-adapter training)."""
    out = []
    for _ in range(n):
        attrs = random_attributes(rng)
        out.append((render(identity, attrs, size, view=int(rng.integers(1 << 30))), attrs))
    return out
