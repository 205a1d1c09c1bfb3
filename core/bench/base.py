"""Benchmark ``base``: are the judges trustworthy, and does the tiny base model follow prompts?

Metrics (fractions 0..1):
- judge_identity_verification_accuracy / judge_attribute_accuracy: the judges re-measured on freshly rendered
  HELD-OUT identities (per attribute as well);
- base_attribute_adherence: share of the attributes a held-out prompt asks for that the attribute judge sees in the
  trained base model's images (prompts are attribute combinations never seen in base-model training);
- random_base_attribute_adherence: the same for a random-weight model of the same shape (the metric can fail);
- chance_attribute_adherence: what guessing each asked attribute uniformly would score.
"""
from __future__ import annotations

import numpy as np
import torch

from ..synthface.captions import caption
from ..synthface.render import ATTRIBUTES
from ..synthface.splits import heldout_combos

EVAL_STEPS = 20
EVAL_CFG = 3.0


def heldout_prompts(n: int | None = None, seed: int = 0) -> list[tuple[str, dict]]:
    """(prompt, asked attributes) for held-out attribute combinations, all six attributes named."""
    combos = heldout_combos()
    if n is not None and n < len(combos):
        idx = np.random.default_rng(seed).choice(len(combos), n, replace=False)
        combos = [combos[i] for i in sorted(idx)]
    return [(caption(c), c) for c in combos]


def chance_adherence(asked: list[dict]) -> float:
    """Expected adherence of uniform guessing over each asked attribute's values."""
    scores = [1.0 / len(ATTRIBUTES[k]) for a in asked for k in a]
    return float(np.mean(scores))


def generate_for_prompts(bp, prompts: list[str], images_per_prompt: int, seed: int = 0, steps: int = EVAL_STEPS,
                         cfg: float = EVAL_CFG, conditioners=()) -> torch.Tensor:
    """Images (N*k, H, W, C) for each prompt through the ONE Generate path."""
    from ..generate import GenerateRequest, generate

    size = bp.native_size
    out = []
    for i, p in enumerate(prompts):
        req = GenerateRequest(prompt=p, negative_prompt="", seed=seed + 1000 * i, steps=steps, cfg=cfg, width=size,
                              height=size, batch_size=images_per_prompt, scheduler="dpmpp_2m")
        out.append(generate(bp, req, conditioners=conditioners))
    return torch.cat(out)


def prompt_adherence(bp, n_prompts: int | None, images_per_prompt: int, seed: int = 0) -> dict:
    """Attribute adherence of ``bp`` on held-out prompts: {"mean", "per_attribute", "n", "chance"}."""
    from ..judges.metrics import attribute_adherence

    pairs = heldout_prompts(n_prompts, seed)
    images = generate_for_prompts(bp, [p for p, _ in pairs], images_per_prompt, seed)
    asked = [a for _, a in pairs for _ in range(images_per_prompt)]
    res = attribute_adherence(images, asked)
    res["chance"] = chance_adherence(asked)
    return res


def load_builtin_base(device: str = "cpu"):
    from ..models import load_pipeline
    from ..synthface.base_model import BASE_DIR

    return load_pipeline(BASE_DIR, device=device, dtype="fp32")


def random_base(seed: int = 1234):
    from ..models import as_base_pipeline
    from ..synthface import base_model as bm

    comps = bm.build_components(seed)
    return as_base_pipeline(bm.make_pipeline(comps), name="random-weights")


def run(quick: bool = False) -> dict:
    from ..judges.metrics import remeasure_judges

    judges = remeasure_judges(n_images=300 if quick else 1500, n_pairs=300 if quick else 2000)
    n_prompts, k = (24, 2) if quick else (None, 4)
    base = prompt_adherence(load_builtin_base(), n_prompts, k)
    rand = prompt_adherence(random_base(), n_prompts, k)
    return {
        "judge_identity_verification_accuracy": judges["verification_accuracy"],
        "judge_attribute_accuracy": judges["attribute_accuracy"],
        "base_attribute_adherence": base["mean"],
        "random_base_attribute_adherence": rand["mean"],
        "chance_attribute_adherence": base["chance"],
        "judge_attribute_accuracy_per_attribute": judges["per_attribute"],
        "base_attribute_adherence_per_attribute": base["per_attribute"],
        "random_base_attribute_adherence_per_attribute": rand["per_attribute"],
        "n_generated_images": base["n"],
        "sampler": {"scheduler": "dpmpp_2m", "steps": EVAL_STEPS, "cfg": EVAL_CFG},
    }
