"""Benchmark ``instruct``: multimodal-instruction generation and editing on SynthFace HELD-OUT identities.

For each held-out identity, one sample of each task (``core/synthface/edits.py``; exact targets known):

- ``subject_generation``: ``"a photo of <image1>, with red hair, ..."`` from another render of the person;
- ``instruction_edit``: ``"make <image1> smiling"`` on a render of the person (the source);
- ``subject_edit``: ``"give <image1> the glasses of <image2>"``, image2 another held-out person.

Models: ``joint`` (trained on the three tasks), ``single`` (for each task the model trained on that task only, same
steps and batch), ``identity_baseline`` (does nothing: returns the source of an edit, the referenced image of a
subject generation -- so preservation alone cannot win).

Per model and task (the JSON's ``"<model>/<task>"``):

- ``edit_success``: share of the asked attributes that the SynthFace attribute judge sees in the result (the one
  changed attribute of an edit; the attributes a subject-generation instruction names);
- ``identity_preserved``: share of results whose identity the SynthFace recognizer verifies (its threshold) against
  the source (edits) or the referenced image (subject generation);
- ``unchanged_kept``: share of the attributes NOT asked to change that keep the source's value (edits only);
- ``preservation``: identity verified AND every unchanged attribute kept, per image (edits); identity verified
  (subject generation);
- ``reference_fidelity``: subject edit: the transferred attribute as judged on the result equals its value as judged
  on the referenced image; subject generation: identity verified against the referenced image; None for a plain
  edit (no reference);
- ``alignment_l1``: mean absolute RGB difference (0..1) between source and result on the pixels the edit must not
  touch (where the exact source and target renders are equal), beside ``vae_l1``: the same for the source's own VAE
  round trip (what any latent model loses; a result near it has no shift or zoom); None for subject generation;
- ``seconds_per_image``: instruction + images -> image (one thread, warm).

The sampled unit is the identity: means over identities, ``*_sem`` standard errors over identities. ``comparisons``:
joint minus single per task, PAIRED over identities (same samples and seeds). ``goals``: the issue's targets.
"""
from __future__ import annotations

import logging
import time
from functools import lru_cache

import numpy as np
import torch

from ..synthface.splits import identities
from .stats import mean_sem

log = logging.getLogger("facesmith.bench")

TASKS = ("subject_generation", "instruction_edit", "subject_edit")
MODELS = {  # name -> file under models/facesmith/instruct/ (per task for "single")
    "joint": "synthface-instruct.safetensors",
    "single": {"subject_generation": "synthface-instruct-subject-generation.safetensors",
               "instruction_edit": "synthface-instruct-instruction-edit.safetensors",
               "subject_edit": "synthface-instruct-subject-edit.safetensors"},
}
FULL_IDENTITIES = 64
QUICK_IDENTITIES = 2
IMAGES_PER_SAMPLE = 2
SAMPLER_STEPS = 20
TEXT_GUIDANCE = 3.0
IMAGE_GUIDANCE = 1.5
WORDS_ROW = "+words"  # a row "<model>+words": see collect
IDENTITY_ROW = "+identity"  # a row "<model>+identity": see collect
DESCRIBED_ROW = "+described_identity"  # a row "<model>+described_identity": see collect
GOALS = {"edit_success": 0.80, "identity_preserved": 0.80}
FIGURES = ("edit_success", "identity_preserved", "unchanged_kept", "preservation", "reference_fidelity",
           "alignment_l1", "vae_l1", "seconds_per_image")


def load_model(name: str):
    from .. import paths
    from ..instruct.model import InstructModel

    path = paths.resolve("facesmith", f"instruct/{name}")
    return InstructModel.load(path)


def load_models() -> dict:
    """{"joint": model, "single": {task: model}} from the shipped files."""
    return {"joint": load_model(MODELS["joint"]),
            "single": {t: load_model(f) for t, f in MODELS["single"].items()}}


def _unit(images) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] from uint8 (N, H, W, 3) / (H, W, 3) or ComfyUI IMAGE."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255
    if x.dim() == 3:
        x = x[None]
    return x.permute(0, 3, 1, 2).float() if x.shape[-1] == 3 else x.float()


@torch.no_grad()
def vae_roundtrip(bp, image: np.ndarray) -> torch.Tensor:
    """The source through the base's VAE (latent mean, decoded), (1, 3, H, W) in [0, 1]."""
    from ..instruct.model import source_latents
    from ..concept.diffusion import scaling_factor

    dp = bp.pipe
    lat = source_latents(bp, image)
    vae = dp.vae
    out = vae.decode((lat / scaling_factor(vae)).to(next(vae.parameters()).device,
                                                    next(vae.parameters()).dtype)).sample
    return ((out.float().cpu() + 1) / 2).clamp(0, 1)


def untouched_mask(source: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """(H, W) bool: pixels where the exact source and target renders are equal (the edit must not touch them)."""
    return torch.from_numpy(np.abs(source.astype(np.int16) - target.astype(np.int16)).max(-1) <= 1)


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |a - b| over the masked pixels and channels; a, b (N, 3, H, W) in [0, 1]."""
    d = (a - b).abs().mean(1)  # (N, H, W)
    m = mask.to(d.dtype)[None].expand_as(d)
    return float((d * m).sum() / m.sum().clamp_min(1))


def judge_sample(sample: dict, results: torch.Tensor, threshold: float, vae_image=None) -> dict:
    """Per-identity figures of one task sample's results (ComfyUI IMAGE (B, H, W, 3))."""
    from ..judges.metrics import attribute_judge, identity_similarity

    task, lab = sample["task"], sample["labels"]
    asked = lab["asked"]
    seen = attribute_judge().predict(results)
    success = [float(np.mean([s[k] == v for k, v in asked.items()])) for s in seen]
    anchor = sample["source"] if sample["source"] is not None else sample["images"][0]
    verified = (identity_similarity(results, anchor) > threshold).astype(float)
    out = {"edit_success": float(np.mean(success)), "identity_preserved": float(np.mean(verified)),
           "unchanged_kept": None, "preservation": float(np.mean(verified)), "reference_fidelity": None,
           "alignment_l1": None, "vae_l1": None}
    if task != "subject_generation":
        src = lab["source_attributes"]
        keep_names = [k for k in src if k != lab["edited"]]
        kept = [[s[k] == src[k] for k in keep_names] for s in seen]
        out["unchanged_kept"] = float(np.mean([np.mean(k) for k in kept]))
        out["preservation"] = float(np.mean([v and all(k) for v, k in zip(verified, kept)]))
        mask = untouched_mask(sample["source"], sample["target"])
        src_img = _unit(sample["source"])
        out["alignment_l1"] = masked_l1(_unit(results), src_img, mask)
        if vae_image is not None:
            out["vae_l1"] = masked_l1(vae_image, src_img, mask)
    if task == "subject_edit":
        name = lab["edited"]
        ref_seen = attribute_judge().predict(_unit(sample["images"][1]).permute(0, 2, 3, 1))[0][name]
        out["reference_fidelity"] = float(np.mean([s[name] == ref_seen for s in seen]))
    elif task == "subject_generation":
        out["reference_fidelity"] = float(np.mean(verified))
    return out


def _samples(identity: int, index: int, seed: int, size: int, split: str = "heldout") -> dict:
    from ..synthface.edits import instruct_sample

    held = identities(split)
    out = {}
    for ti, task in enumerate(TASKS):
        rng = np.random.default_rng([seed, 41, index, ti])  # each identity and task its own stream
        out[task] = instruct_sample(task, rng, held, size, identity=identity)
    return out


@lru_cache(maxsize=1)
def _adapter():
    """The shipped identity adapter (rows ``"<model>+identity"``), loaded once."""
    from .identity import ADAPTERS, load_adapter

    return load_adapter(ADAPTERS["adapter_1ref"])


def collect(n_identities: int, images_per_sample: int = IMAGES_PER_SAMPLE, seed: int = 0, bp=None,
            models: dict | None = None, steps: int = SAMPLER_STEPS, shard: tuple[int, int] = (0, 1),
            rows: tuple | None = None, split: str = "heldout", image_guidance: float = IMAGE_GUIDANCE,
            text_guidance: float = TEXT_GUIDANCE, tasks: tuple = TASKS) -> list[dict]:
    """Per-identity figures for identities ``shard[0]::shard[1]`` of the ``n_identities`` drawn (shards combine in
    :func:`summarize`). ``models``: ``{"joint": model, "single": {task: model}}`` and any other name -> a model
    evaluated on every task (e.g. a longer-trained joint model); ``rows``: which of them (and
    ``identity_baseline``) to run, default all; ``split``: "heldout" for the reported figures, "val" to choose
    settings such as the guidance scales without touching the held-out identities; ``tasks``: which tasks to run
    (every identity's samples are drawn for all three, so a subset keeps the same samples). A row named
    ``"<model>+words"`` is that model given, in subject generation, the identity words the built-in face model reads
    on image1 after ``<image1>`` (what a graph with Face Describe does; never the judges). A row named
    ``"<model>+identity"`` (subject generation only) is that model with the identity of image1 from the shipped
    identity adapter applied together (Apply Identity into Instruct Generate's ``concepts``); ``"<model>" +
    DESCRIBED_ROW`` the same identity with the words the built-in face model reads on image1 folded in (Face
    Describe's identity_words into Apply Identity's ``words``, as the adapter was trained and benchmarked)."""
    from ..concept.tokens import with_words
    from ..instruct.instruction import parse
    from ..instruct.model import instruct_images
    from ..judges.metrics import recognizer
    from .base import load_builtin_base

    bp = bp or load_builtin_base()
    models = models or load_models()
    threshold = float(recognizer().threshold)

    def identity_of(image, described=False):  # Apply Identity of image1 with the shipped adapter, default weight
        from ..identity import face_pipeline as fp
        from ..identity.adapter import DEFAULT_WEIGHT, IdentityConditioner

        faces = fp.analyze(np.asarray(image)[None], fp.FaceSettings(recognizer="none"))
        identity = _adapter().identity(bp, faces.crops)
        if described:  # Face Describe's identity_words of image1 into Apply Identity's words
            identity = identity.described(bp, read(image))
        return IdentityConditioner(_adapter(), identity, weight=DEFAULT_WEIGHT)

    def read(image) -> str:  # Face Describe's identity words of image1
        from ..understand.check import identity_words
        from .concept import _understander

        return identity_words(_understander(), image)
    chosen = [int(i) for i in np.random.default_rng(seed).choice(identities(split), n_identities, replace=False)]

    def run(model, s, gen_seed, identity=None):  # identity: None, IDENTITY_ROW or DESCRIBED_ROW
        ins = parse(s["instruction"], list(range(1, len(s["images"]) + 1)))
        imgs = {i + 1: im for i, im in enumerate(s["images"])}
        t0 = time.perf_counter()
        extra = [identity_of(s["images"][0], identity == DESCRIBED_ROW)] if identity else []
        out = instruct_images(bp, model, ins, imgs, source=s["source"], image_guidance=image_guidance,
                              text_guidance=text_guidance, steps=steps, seed=gen_seed, batch_size=images_per_sample,
                              conditioners=extra)
        return out, (time.perf_counter() - t0) / images_per_sample

    rows = tuple(rows or (*models, "identity_baseline"))
    warm = _samples(chosen[0], 10 ** 6, seed, bp.native_size, split)["subject_edit"]
    first = next(m for m in models.values() if not isinstance(m, dict))
    run(first, warm, 0)  # warm-up, untimed
    records = []
    for n in range(shard[0], n_identities, shard[1]):
        samples = _samples(chosen[n], n, seed, bp.native_size, split)
        rec = {"index": n, "identity": chosen[n], "figures": {}}
        for task, s in samples.items():
            if task not in tasks:
                continue
            vae_img = vae_roundtrip(bp, s["source"]) if s["source"] is not None else None
            gen_seed = seed + 1000 * n
            for name in rows:
                model_name, s_used = name, s
                identity = next((r for r in (IDENTITY_ROW, DESCRIBED_ROW) if name.endswith(r)), None)
                if identity:
                    if task != "subject_generation":
                        continue
                    model_name = name[:-len(identity)]
                if name.endswith(WORDS_ROW):
                    model_name = name[:-len(WORDS_ROW)]
                    if task == "subject_generation":
                        s_used = dict(s, instruction=with_words(s["instruction"], read(s["images"][0]), "<image1>"))
                if name == "identity_baseline":
                    base_img = s["source"] if s["source"] is not None else s["images"][0]
                    out = torch.from_numpy(np.repeat(base_img[None], images_per_sample, 0)).float() / 255
                    secs = 0.0
                else:
                    model = models[model_name][task] if isinstance(models[model_name], dict) else models[model_name]
                    out, secs = run(model, s_used, gen_seed, identity)
                fig = judge_sample(s, out, threshold, vae_img)
                fig["seconds_per_image"] = secs
                rec["figures"][f"{name}/{task}"] = fig
        records.append(rec)
        log.info("instruct bench: identity %d/%d done", n + 1, n_identities)
    return records


def summarize(records: list[dict]) -> dict:
    records = sorted(records, key=lambda r: r["index"])
    keys = list(records[0]["figures"]) if records else []
    out: dict = {}
    for key in keys:
        row: dict = {}
        for f in FIGURES:
            vals = [r["figures"][key][f] for r in records if r["figures"][key][f] is not None]
            if not vals:
                row[f] = None
                continue
            row[f], row[f"{f}_sem"] = mean_sem(vals)
        row["n_identities"] = len(records)
        out[key] = row
    comps = {}
    for task in TASKS:
        a, b = f"joint/{task}", f"single/{task}"
        if a in keys and b in keys:
            comps[task] = {}
            for f in ("edit_success", "identity_preserved", "preservation"):
                d = [r["figures"][a][f] - r["figures"][b][f] for r in records]
                m, se = mean_sem(d)
                comps[task][f] = {"joint_minus_single": m, "sem": se}
    out["comparisons"] = comps
    out["goal_thresholds"] = dict(GOALS)
    out["goals"] = goals(out, comps)
    return out


def goals(out: dict, comps: dict) -> dict:
    g = {}
    for task in TASKS:
        row = out.get(f"joint/{task}")
        if row is None:
            continue
        g[f"joint/{task}/edit_success_ge_0.80"] = bool(row["edit_success"] >= GOALS["edit_success"])
        g[f"joint/{task}/identity_preserved_ge_0.80"] = bool(row["identity_preserved"] >= GOALS["identity_preserved"])
        if task in comps:
            c = comps[task]
            g[f"joint_ge_single/{task}"] = bool(c["edit_success"]["joint_minus_single"] >= 0
                                                and c["preservation"]["joint_minus_single"] >= 0)
    return g


def settings_of(n_ids: int, per_sample: int, steps: int, models: dict) -> dict:
    return {"split": "heldout", "identities": n_ids, "images_per_sample": per_sample, "sampler": "dpmpp_2m",
            "steps": steps, "text_guidance": TEXT_GUIDANCE, "image_guidance": IMAGE_GUIDANCE, "sem_over": "identities",
            "models": {"joint": models["joint"].info.get("command", "?"),
                       **{f"single/{t}": m.info.get("command", "?") for t, m in models["single"].items()}},
            "steps_trained": {"joint": models["joint"].info.get("steps"),
                              **{f"single/{t}": m.info.get("steps") for t, m in models["single"].items()}}}


def run(quick: bool = False, n_identities: int | None = None, seed: int = 0, bp=None, models: dict | None = None,
        steps: int = SAMPLER_STEPS, workers: int = 1) -> dict:
    """``workers`` > 1: the identities in that many processes, each with the shipped models."""
    from .harness import collect_in_shards

    if workers > 1 and (bp is not None or models is not None):
        raise ValueError("workers > 1 runs each process on the shipped models; do not pass bp or models")
    n_ids = n_identities or (QUICK_IDENTITIES if quick else FULL_IDENTITIES)
    models = models or load_models()  # for the settings; the worker processes load their own
    records = collect_in_shards(collect, workers, n_identities=n_ids, images_per_sample=IMAGES_PER_SAMPLE,
                                seed=seed, bp=bp, models=models if workers <= 1 else None, steps=steps)
    result = summarize(records)
    result["settings"] = settings_of(n_ids, IMAGES_PER_SAMPLE, steps, models)
    return result
