"""What ``facesmith bench base`` measures about the identity world (issue: "a world that can carry who a person is").

All on HELD-OUT identities, standard errors over identities:

- ``vae_roundtrip``: real renders through the base's VAE (encode, decode): attribute judge accuracy per attribute
  on the reconstruction, and identity verification of the reconstruction against ANOTHER render of the same person
  (beside the same figure for the original render, the ceiling);
- ``text_route``: images from a prompt that describes a held-out person in words (every identity trait, plus
  attributes) against a real render of that person, minus images from a prompt describing another held-out person
  against the same render: how much of who someone is the base can take from text;
- ``identity_richness``: pairs of DIFFERENT held-out identities that share all five core facts (skin tone, eye colour
  and shape, hair style, nose shape): the share the recognizer calls different, on real renders.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from ..synthface.captions import caption
from ..synthface.render import CORE_FACTS, identity_traits, random_attributes, render
from ..synthface.splits import identities
from .stats import identity_mean_sem, mean_sem


def _heldout_sample(n: int, seed: int) -> list[int]:
    ids = identities("heldout")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(ids, size=min(n, len(ids)), replace=False)]


@torch.no_grad()
def vae_roundtrip(vae, n_identities: int, seed: int = 11) -> dict:
    from ..judges.metrics import attribute_judge, embed, recognizer
    from ..images import comfy_to_model, model_to_comfy, numpy_to_comfy

    rng = np.random.default_rng(seed)
    ids = _heldout_sample(n_identities, seed)
    originals, others, attrs = [], [], []
    for i in ids:
        a = random_attributes(rng)
        attrs.append(a)
        originals.append(render(i, a, 64, view=int(rng.integers(1 << 30))))
        others.append(render(i, random_attributes(rng), 64, view=int(rng.integers(1 << 30))))
    x = comfy_to_model(numpy_to_comfy(np.stack(originals)))
    dev = next(vae.parameters()).device
    latents = vae.encode(x.to(dev, vae.dtype)).latent_dist.mean
    recon = model_to_comfy(vae.decode(latents).sample.float().cpu())
    seen = attribute_judge().predict(recon)
    per_attribute = {k: float(np.mean([s[k] == a[k] for s, a in zip(seen, attrs)])) for k in attrs[0]}
    e_rec, e_orig, e_other = embed(recon), embed(np.stack(originals)), embed(np.stack(others))
    thr = float(recognizer().threshold)
    sim_rec = (e_rec * e_other).sum(1).numpy()
    verified, verified_sem = mean_sem(sim_rec > thr)
    sim_orig = (e_orig * e_other).sum(1).numpy()
    return {"per_attribute": per_attribute, "attribute_min": min(per_attribute.values()),
            "identity_verification": verified, "identity_verification_sem": verified_sem,
            "identity_verification_originals": float(np.mean(sim_orig > thr)),
            "identity_similarity": float(sim_rec.mean()), "identity_similarity_originals": float(sim_orig.mean()),
            "n_identities": len(ids)}


def text_route(bp, n_identities: int, images_per_prompt: int = 2, seed: int = 12, steps: int | None = None) -> dict:
    """Per held-out identity i (paired with another held-out identity j): images described as i and as j, both
    scored against a real render of i (``steps`` sampler steps; default the benchmark's)."""
    from ..judges.metrics import embed, recognizer
    from .base import EVAL_STEPS, generate_for_prompts

    rng = np.random.default_rng(seed)
    ids = _heldout_sample(n_identities, seed)
    partners = ids[1:] + ids[:1]
    prompts, refs = [], []
    for i, j in zip(ids, partners):
        a = random_attributes(rng)
        mention = ["hair", "expression", "background"]
        prompts += [caption(a, identity=identity_traits(i).facts(), mention=mention),
                    caption(a, identity=identity_traits(j).facts(), mention=mention)]
        refs.append(render(i, a, 64, view=None))
    images = generate_for_prompts(bp, prompts, images_per_prompt, seed, steps=steps or EVAL_STEPS)
    e = embed(images).view(len(ids), 2, images_per_prompt, -1)
    r = embed(np.stack(refs))
    sims = torch.einsum("nkpd,nd->nkp", e, r).numpy()  # (identity, own/other, image)
    own, other = sims[:, 0].mean(1), sims[:, 1].mean(1)
    thr = float(recognizer().threshold)
    route, route_sem = mean_sem(own - other)
    return {"text_route": route, "text_route_sem": route_sem,
            "own_description_similarity": mean_sem(own)[0], "other_description_similarity": mean_sem(other)[0],
            "own_description_verification": mean_sem((sims[:, 0] > thr).mean(1))[0],
            "n_identities": len(ids), "images_per_prompt": images_per_prompt}


def identity_richness(n_pairs: int, seed: int = 13) -> dict:
    """Share of pairs of different held-out identities with all CORE_FACTS equal that the recognizer calls
    different (real renders, independent attributes and views)."""
    from ..judges.metrics import embed, recognizer

    groups: dict[tuple, list[int]] = {}
    for i in identities("heldout"):
        f = identity_traits(i).facts()
        groups.setdefault(tuple(f[k] for k in CORE_FACTS), []).append(i)
    pairs = [p for g in groups.values() for p in itertools.combinations(g, 2)]
    rng = np.random.default_rng(seed)
    pick = [pairs[k] for k in rng.choice(len(pairs), size=min(n_pairs, len(pairs)), replace=False)]
    a = [render(i, random_attributes(rng), 64, view=int(rng.integers(1 << 30))) for i, _ in pick]
    b = [render(j, random_attributes(rng), 64, view=int(rng.integers(1 << 30))) for _, j in pick]
    sims = (embed(np.stack(a)) * embed(np.stack(b))).sum(1).numpy()
    different = sims <= float(recognizer().threshold)
    by_identity: dict[int, list[bool]] = {}
    for (i, _), d in zip(pick, different):
        by_identity.setdefault(i, []).append(bool(d))
    share, sem = identity_mean_sem(list(by_identity.values()))
    return {"identity_richness": share, "identity_richness_sem": sem, "n_pairs": len(pick),
            "pairs_available": len(pairs), "mean_similarity": float(sims.mean())}
