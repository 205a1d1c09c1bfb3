"""The measuring sticks every FaceSmith benchmark uses, built on the SynthFace judges.

- :func:`identity_similarity`: cosine between each image's identity embedding and the reference's;
- :func:`verification_rate`: share of images the recognizer accepts as the reference person (its threshold);
- :func:`attribute_adherence`: share of the asked attributes the attribute judge sees;
- :func:`diversity`: mean pairwise ``1 - cosine`` of identity embeddings (0 = all the same person);
- :func:`judge_report`: the held-out accuracies measured when the shipped judge weights were built;
- :func:`remeasure_judges`: the same accuracies measured again, now, on freshly rendered held-out identities.

Images are uint8 numpy ``(N, H, W, 3)`` or ComfyUI IMAGE tensors. Faces are assumed centred and upright (SynthFace
renders, the base model's images); pass ``align="detect"`` to locate them with the built-in detector first.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .data import ATTRIBUTE_HEADS, FACT_HEADS, HEADS


@lru_cache(maxsize=1)
def attribute_judge():
    from .attributes import AttributeJudge

    return AttributeJudge.load()


@lru_cache(maxsize=1)
def recognizer():
    from .recognizer import IdentityRecognizer

    return IdentityRecognizer.load()


def _embed(images, align: str = "canonical") -> torch.Tensor:
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 2:  # already embeddings
        e = torch.as_tensor(np.asarray(images, dtype=np.float32))
        return e / e.norm(dim=1, keepdim=True).clamp_min(1e-6)
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 1:
        return _embed(np.asarray(images, dtype=np.float32)[None])
    rec = recognizer()
    if align == "canonical":
        return rec.embed(images)
    if align == "detect":
        from ..faces import detect_and_crop
        from .align import to_batch

        x = to_batch(images)
        crops = np.stack([detect_and_crop(x[i].permute(1, 2, 0).numpy(), 112, backend="synthface")
                          for i in range(x.shape[0])])
        return rec.embed(crops, aligned=True)
    raise ValueError(f"align must be 'canonical' or 'detect', got {align!r}")


def embed(images, align: str = "canonical") -> torch.Tensor:
    """``(N, 128)`` L2-normalised identity embeddings."""
    return _embed(images, align)


def _reference_embedding(reference, align: str) -> torch.Tensor:
    e = _embed(reference, align)
    m = e.mean(0)
    return m / m.norm().clamp_min(1e-6)


def identity_similarity(images, reference, align: str = "canonical") -> np.ndarray:
    """Per-image cosine similarity to ``reference`` (image(s) -- several are averaged -- or embedding(s))."""
    e = _embed(images, align)
    return (e @ _reference_embedding(reference, align)).numpy().astype(np.float64)


def verification_rate(images, reference, align: str = "canonical") -> float:
    """Fraction of ``images`` whose similarity to ``reference`` is over the recognizer's threshold."""
    return float(np.mean(identity_similarity(images, reference, align) > recognizer().threshold))


def attribute_adherence(images, asked: list[dict]) -> dict:
    """Share of the asked attributes (``asked[i]`` for image i, e.g. ``{"hair": "red", "glasses": True}``; identity
    facts such as ``eye_colour`` may be asked too) that the attribute judge sees.

    Returns ``{"mean": share over all asked values, "per_attribute": {name: accuracy}, "n": images,
    "checks": asked values}``; ``mean`` is NaN when nothing was asked."""
    seen = attribute_judge().predict(images)
    if len(asked) != len(seen):
        raise ValueError(f"attribute_adherence: {len(seen)} images but {len(asked)} 'asked' entries")
    hits: dict[str, list[bool]] = {}
    for s, a in zip(seen, asked):
        for k, v in a.items():
            if k not in HEADS:
                raise ValueError(f"attribute_adherence: unknown attribute {k!r}; known: {list(HEADS)}")
            if v not in HEADS[k]:
                raise ValueError(f"attribute_adherence: {k}={v!r} is not one of {HEADS[k]}")
            hits.setdefault(k, []).append(s[k] == v)
    allhits = [h for v in hits.values() for h in v]
    return {"mean": float(np.mean(allhits)) if allhits else float("nan"),
            "per_attribute": {k: float(np.mean(v)) for k, v in hits.items()}, "n": len(seen),
            "checks": len(allhits)}


def diversity(images, align: str = "canonical") -> float:
    """Mean pairwise ``1 - cosine`` of the images' identity embeddings (needs at least 2 images)."""
    e = _embed(images, align)
    n = e.shape[0]
    if n < 2:
        raise ValueError("diversity needs at least 2 images")
    sims = e @ e.T
    off = sims[~torch.eye(n, dtype=torch.bool)]
    return float((1.0 - off).mean())


def judge_report() -> dict:
    """Held-out accuracies measured when the judge weights were built (from the weight files' metadata)."""
    a, r = attribute_judge(), recognizer()
    out = {"attributes": a.held_out, "recognizer": r.held_out, "threshold": r.threshold,
           "attribute_file": str(a.path), "recognizer_file": str(r.path)}
    try:
        from .detector import FaceDetector

        d = FaceDetector.load()
        out["detector"] = d.metadata.get("held_out", {})
    except FileNotFoundError:
        out["detector"] = None
    return out


def remeasure_judges(n_images: int = 500, n_pairs: int = 1000, seed: int = 20240) -> dict:
    """Re-measure the judges on FRESH renders of HELD-OUT identities (a different seed from build time).

    Returns ``{"attribute_accuracy": mean over the 6 attributes, "per_attribute": {attribute: acc},
    "fact_accuracy": mean over identity facts, "per_fact": {...}, "verification_accuracy": at the stored threshold,
    "verification": details, "n_images", "n_pairs"}``."""
    from . import data

    pool = data.eval_images("heldout", n_images, seed)
    acc = data.attribute_accuracy(attribute_judge(), pool)
    ver = data.verification(recognizer(), "heldout", n_pairs, seed + 1)
    return {"attribute_accuracy": acc["mean"],
            "per_attribute": {k: acc["per_head"][k] for k in ATTRIBUTE_HEADS},
            "fact_accuracy": acc["facts_mean"],
            "per_fact": {k: acc["per_head"][k] for k in FACT_HEADS},
            "verification_accuracy": ver["accuracy"], "verification": ver,
            "n_images": n_images, "n_pairs": n_pairs}
