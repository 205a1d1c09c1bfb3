"""Benchmark ``identity``: tuning-free identity (the identity adapter) against E4T on SynthFace HELD-OUT identities.

For each held-out identity, one reference render (random attributes) and three more renders of the same person
(other attributes, pose and light) go through the face pipeline (built-in detector, ArcFace alignment; its recognizer
is not used). Methods:

With ``words=True`` (the default; what the shipped graph does: Face Describe's ``identity_words`` into Apply
Identity's ``words``) every adapter method also folds in words for WHO the person is
(``understand.check.identity_words``: the visible identity traits the built-in face understanding model reads with
confidence >= 0.5, never the judges): the token reads "<token>, words". Methods:

- ``adapter_1ref``: the shipped identity adapter from the reference's face (words read on the reference);
- ``adapter_4ref``: the same from all four faces (mixed: ``combine="average"``; words read on each photo and merged
  trait by trait, ``understand.check.merged_words``);
- ``adapter_no_mix``: an adapter trained with the same recipe but without mixed features (its one reference was the
  target image itself), from the reference;
- ``adapter_no_idloss``: an adapter trained without the face identity loss, from the reference;
- ``adapter_1ref_no_words``: the shipped adapter from the reference, WITHOUT words (what the words add);
- ``words_only``: no identity at all, "a person" followed by the words read on the reference (what the words alone
  carry: the adapter must add to it);
- ``e4t_0`` / ``e4t_k``: the shipped E4T encoder without / with ``k`` tuning steps (as in ``bench concept``);
- ``e4t_k_words``: E4T as Embed Concept runs it with a face model connected (the reference's attributes in the
  tuning caption, the identity words folded into the concept, ``DESCRIBED_TUNING_STEPS`` steps);
- ``no_identity`` (the floor): "a person" instead of the identity token.

Each identity generates images for prompts that CHANGE the reference's hair colour, glasses, hat and expression, the
same seeds for every method. Per method: ``identity_similarity`` and ``verification_rate`` (the SynthFace judge's
recognizer against the reference; the adapter's own face encoder is another network), the same two against the
person rather than the photo (``identity_similarity_gallery``, ``verification_rate_gallery``: against each of
``N_GALLERY`` other renders of the identity that no method is given, averaged; "4 references beat 1" is read on
these, since the reference photo is all the 1-reference adapter sees), ``attribute_adherence``,
``reference_leak`` (share of asked changes where the judge sees the reference's value), ``diversity`` (mean pairwise
RMS pixel difference, in [0, 1] RGB, between images of one prompt made with different seeds) and
``seconds_per_identity`` (reference image(s) -> conditioning: face pipeline + adapter, or E4T encoder + tuning;
warm, one thread). The sampled unit is the identity: means over identities of per-identity means, ``*_sem`` their
standard errors. Comparisons between methods (``comparisons``) are PAIRED over identities (same identities, prompts
and seeds): the mean per-identity difference (of identity similarity, adherence and leak) and its standard error.
``goals`` holds the issue's targets as booleans computed from the figures. Full mode: ``FULL_IDENTITIES`` held-out
identities x 4 prompts x ``IMAGES_PER_PROMPT`` seeds, ``SAMPLER_STEPS`` sampler steps. Identities are independent
(each has its own random stream), so ``collect`` can run in shards and ``summarize`` combines them.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..synthface.render import identity_traits, random_attributes, render
from ..synthface.splits import identities
from .base import EVAL_CFG, generate_for_prompts, load_builtin_base
from .concept import E4T_K, _judge_identity, _row, _similarities, _threshold, change_prompts, load_encoder
from .stats import mean_sem

log = logging.getLogger("facesmith.bench")

TOKEN = "<fs-person>"
ADAPTERS = {  # method -> adapter file under models/facesmith/identity/
    "adapter_1ref": "synthface-idadapter.safetensors",
    "adapter_4ref": "synthface-idadapter.safetensors",
    "adapter_no_mix": "synthface-idadapter-no-mix.safetensors",
    "adapter_no_idloss": "synthface-idadapter-no-idloss.safetensors",
    "adapter_1ref_no_words": "synthface-idadapter.safetensors",
}
NO_WORDS = ("adapter_1ref_no_words",)  # adapter methods that never read words
METHODS = ("adapter_1ref", "adapter_4ref", "adapter_no_mix", "adapter_no_idloss", "adapter_1ref_no_words",
           "words_only", "e4t_0", "e4t_k", "e4t_k_words", "no_identity")
FULL_IDENTITIES = 64
QUICK_IDENTITIES = 3
N_REFS = 4
N_GALLERY = 3           # unseen renders of each identity that no method is given: identity beyond the one photo
IMAGES_PER_PROMPT = 2   # two seeds per prompt: the least that measures diversity
SAMPLER_STEPS = 12      # dpmpp_2m steps per image (bench base/concept use 20; 10 methods x 64 identities on a CPU)
GOALS = {"adapter_1ref_verification": 0.60, "adapter_time_share_of_e4t_k": 0.10, "adherence_points_below_base": 0.05,
         "reference_leak": 0.10}


def load_adapter(name: str):
    from .. import paths
    from ..identity.adapter import IdentityAdapter

    return IdentityAdapter.load(paths.resolve("facesmith", f"identity/{name}"))


def _load_adapters(adapters: dict, methods) -> None:
    """Fill ``adapters`` (method -> IdentityAdapter) for ``methods``, each file loaded once."""
    by_file = {ADAPTERS[m]: a for m, a in adapters.items() if m in ADAPTERS}
    for m in methods:
        if m in ADAPTERS and m not in adapters:
            if ADAPTERS[m] not in by_file:
                by_file[ADAPTERS[m]] = load_adapter(ADAPTERS[m])
            adapters[m] = by_file[ADAPTERS[m]]


def diversity(images: torch.Tensor, per_prompt: int) -> float:
    """Mean pairwise RMS difference between images of the same prompt (consecutive groups of ``per_prompt``)."""
    x = images.float().reshape(images.shape[0], -1)
    vals = []
    for g in range(0, x.shape[0], per_prompt):
        grp = x[g:g + per_prompt]
        for i in range(len(grp)):
            for j in range(i + 1, len(grp)):
                vals.append(float((grp[i] - grp[j]).pow(2).mean().sqrt()))
    return float(np.mean(vals)) if vals else float("nan")


def paired(a: list[float], b: list[float]) -> dict:
    """Mean and s.e. of per-identity differences ``a - b`` (same identities, prompts and seeds; identities where
    either is undefined, e.g. no asked change to leak, are left out)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    m, se = mean_sem(d)
    return {"difference": m, "sem": se, "over_2_sem": bool(m > 2 * se) if np.isfinite(se) else False}


def goals(out: dict, comps: dict) -> dict:
    g: dict = {}
    one, e4t_k, floor = out.get("adapter_1ref"), out.get("e4t_k"), out.get("no_identity")
    if one is not None:
        g["adapter_1ref_verification_ge_0.60"] = one["verification_rate"] >= GOALS["adapter_1ref_verification"]
        g["adapter_1ref_leak_le_0.10"] = one["reference_leak"] <= GOALS["reference_leak"]
        if e4t_k is not None:
            g["adapter_1ref_similarity_ge_e4t_k"] = one["identity_similarity"] >= e4t_k["identity_similarity"]
            g["adapter_1ref_time_lt_e4t_k_over_10"] = (
                one["seconds_per_identity"] < GOALS["adapter_time_share_of_e4t_k"] * e4t_k["seconds_per_identity"])
        if floor is not None:
            g["adapter_1ref_adherence_within_5_points_of_base"] = (
                one["attribute_adherence"] >= floor["attribute_adherence"] - GOALS["adherence_points_below_base"])
    for name in ("4ref_beats_1ref", "no_mix_worse", "no_idloss_worse"):
        if name in comps:
            g[name] = comps[name]["over_2_sem"]
    if "identity_similarity_gallery" in comps.get("4ref_beats_1ref", {}):
        # a person, not a photo: against renders no method was given (against the reference photo, which is all the
        # 1-reference adapter sees and a quarter of what the 4-reference one sees, the comparison favours 1 reference)
        g["4ref_beats_1ref_on_the_reference_photo"] = g["4ref_beats_1ref"]
        g["4ref_beats_1ref"] = comps["4ref_beats_1ref"]["identity_similarity_gallery"]["over_2_sem"]
    return {k: bool(v) for k, v in g.items()}


def collect(n_identities: int, images_per_prompt: int, seed: int = 0, bp=None, adapters: dict | None = None,
            encoder=None, methods: tuple = METHODS, k: int = E4T_K, eval_steps: int = SAMPLER_STEPS,
            cfg: float = EVAL_CFG, split: str = "heldout", shard: tuple[int, int] = (0, 1),
            adapter_weight: float | None = None, words: bool = True) -> list[dict]:
    """Per-identity figures of every method for identities ``shard[0]::shard[1]`` of the ``n_identities`` drawn.
    Each identity has its own random stream (reference, views, prompts) and seeds, so shards run in parallel and
    :func:`summarize` of their concatenation equals a single run. ``adapter_weight``: the adapters' strength (Apply
    Identity's weight; default ``DEFAULT_WEIGHT``, chosen on validation identities). ``words``: the adapter methods
    (but ``NO_WORDS``) fold in the identity words the face model reads on their references."""
    from ..concept.personalize import DESCRIBED_TUNING_STEPS, embed_e4t
    from ..concept.tokens import with_words
    from ..identity import face_pipeline as fp
    from ..identity.adapter import IdentityConditioner
    from ..judges.metrics import embed
    from ..understand.check import caption_and_words, identity_words, merged_words
    from ..understand.store import load_face_model

    from ..identity.adapter import DEFAULT_WEIGHT

    adapter_weight = DEFAULT_WEIGHT if adapter_weight is None else float(adapter_weight)
    bp = bp or load_builtin_base()
    adapters = dict(adapters or {})
    _load_adapters(adapters, methods)
    if any(m.startswith("e4t") for m in methods):
        encoder = encoder or load_encoder()
    settings = fp.FaceSettings(recognizer="none")
    chosen = [int(i) for i in np.random.default_rng(seed).choice(identities(split), n_identities, replace=False)]
    reads = words and any(m in ADAPTERS and m not in NO_WORDS for m in methods) \
        or bool({"words_only", "e4t_k_words"} & set(methods))
    und = load_face_model() if reads else None

    def read(refs) -> str:  # Face Describe's identity_words of each photo -> Apply Identity's words
        return merged_words([identity_words(und, r) for r in refs])

    # each maker: reference(s) -> (conditioner or None, words written after the token in the prompt)
    def adapter_make(m):
        def make(refs):
            faces = fp.analyze(refs, settings)
            ident = adapters[m].identity(bp, faces.crops)
            if words and m not in NO_WORDS:
                ident = ident.described(bp, read(refs))
            return IdentityConditioner(adapters[m], ident, token=TOKEN, weight=adapter_weight), ""
        return make

    makers = {m: adapter_make(m) for m in methods if m in ADAPTERS}
    def e4t_described(refs):  # Embed Concept with a face model: one reading gives caption and words
        caption, said = caption_and_words(und, refs[0])
        return embed_e4t(encoder, bp, refs[0], token=TOKEN, steps=DESCRIBED_TUNING_STEPS, seed=seed, caption=caption,
                         words=said), ""

    e4t = {"e4t_0": lambda refs: (embed_e4t(encoder, bp, refs[0], token=TOKEN, steps=0, seed=seed), ""),
           "e4t_k": lambda refs: (embed_e4t(encoder, bp, refs[0], token=TOKEN, steps=k, seed=seed), ""),
           "e4t_k_words": e4t_described,
           "words_only": lambda refs: (None, read(refs))}
    makers.update({m: f for m, f in e4t.items() if m in methods})
    warm = np.stack([render(int(identities("train")[0]), random_attributes(np.random.default_rng(99)),
                            bp.native_size, view=v) for v in range(N_REFS)])
    for m, make in makers.items():  # warm-up, untimed
        make(warm if m == "adapter_4ref" else warm[:1])
    threshold = _threshold()
    records = []
    for n in range(shard[0], n_identities, shard[1]):
        ident = chosen[n]
        rng = np.random.default_rng([seed, 31, n])
        ref_attrs = random_attributes(rng)
        refs = [render(ident, ref_attrs, bp.native_size, view=int(rng.integers(1 << 30)))]
        refs += [render(ident, random_attributes(rng), bp.native_size, view=int(rng.integers(1 << 30)))
                 for _ in range(N_REFS - 1)]
        refs = np.stack(refs)
        prompts = change_prompts(ref_attrs, rng, token=TOKEN)
        asked = [a for _, a in prompts for _ in range(images_per_prompt)]
        facts = identity_traits(ident).facts()
        # drawn after everything above, so the reference-based figures are those of runs before the gallery existed
        gallery = [render(ident, random_attributes(rng), bp.native_size, view=int(rng.integers(1 << 30)))
                   for _ in range(N_GALLERY)]
        gallery_emb = embed(np.stack(gallery))  # the judge's embeddings, once per identity
        rec: dict = {"index": n, "identity": ident, "methods": {}}
        for m in methods:
            seconds = None
            if m == "no_identity":
                texts, conds = [p.replace(TOKEN, "a person") for p, _ in prompts], []
            else:
                t0 = time.perf_counter()
                cond, said = makers[m](refs if m == "adapter_4ref" else refs[:1])
                seconds = time.perf_counter() - t0
                texts = [with_words(p, said, TOKEN) for p, _ in prompts]
                if cond is None:
                    texts, conds = [t.replace(TOKEN, "a person") for t in texts], []
                else:
                    conds = [cond]
            imgs = generate_for_prompts(bp, texts, images_per_prompt, seed=seed + 100 * n, steps=eval_steps,
                                        cfg=cfg, conditioners=conds)
            fig = _judge_identity(imgs, _similarities(imgs, refs[0]), threshold, asked, ref_attrs, facts)
            fig = {k_: (v.tolist() if isinstance(v, np.ndarray) else v) for k_, v in fig.items()}
            gal = (gallery_emb @ embed(imgs).T).numpy().astype(np.float64)  # (N_GALLERY, images)
            fig.update(diversity=diversity(imgs, images_per_prompt), seconds=seconds,
                       gallery_sims=gal.mean(0).tolist(), gallery_verified=(gal > threshold).mean(0).tolist())
            rec["methods"][m] = fig
        records.append(rec)
        log.info("identity bench: identity %d/%d done", n + 1, n_identities)
    return records


def summarize(records: list[dict]) -> dict:
    """Method rows (means over identities, s.e. over identities), paired comparisons and goals."""
    records = sorted(records, key=lambda r: r["index"])
    methods = list(records[0]["methods"]) if records else []
    out: dict = {}
    for m in methods:
        per = [dict(r["methods"][m], sims=np.asarray(r["methods"][m]["sims"]),
                    verified=np.asarray(r["methods"][m]["verified"])) for r in records]
        secs = [p["seconds"] for p in per if p["seconds"] is not None]
        row = _row(per, secs, [])
        row.pop("bytes_per_concept", None)
        row["seconds_per_identity"] = row.pop("seconds_per_concept")
        row["diversity"], row["diversity_sem"] = mean_sem([p["diversity"] for p in per])
        if all("gallery_sims" in p for p in per):  # against unseen renders of the person (module doc)
            for key, src in (("identity_similarity_gallery", "gallery_sims"), ("verification_rate_gallery",
                                                                              "gallery_verified")):
                row[key], row[f"{key}_sem"] = mean_sem([float(np.mean(p[src])) for p in per])
        out[m] = row
    per_id = {m: {"identity_similarity": [float(np.mean(r["methods"][m]["sims"])) for r in records],
                  "attribute_adherence": [float(r["methods"][m]["adherence"]) for r in records],
                  "reference_leak": [float(r["methods"][m]["leak"]) for r in records]} for m in methods}
    for m in methods:
        if all("gallery_sims" in r["methods"][m] for r in records):
            per_id[m]["identity_similarity_gallery"] = [float(np.mean(r["methods"][m]["gallery_sims"]))
                                                        for r in records]
    comps = {}
    for name, (a, b) in {"4ref_beats_1ref": ("adapter_4ref", "adapter_1ref"),
                         "no_mix_worse": ("adapter_1ref", "adapter_no_mix"),
                         "no_idloss_worse": ("adapter_1ref", "adapter_no_idloss"),
                         "adapter_1ref_minus_e4t_k": ("adapter_1ref", "e4t_k"),
                         "words_add": ("adapter_1ref", "adapter_1ref_no_words"),
                         "adapter_1ref_minus_words_only": ("adapter_1ref", "words_only"),
                         "adapter_1ref_minus_e4t_k_words": ("adapter_1ref", "e4t_k_words")}.items():
        if a in per_id and b in per_id:
            comps[name] = {key: paired(per_id[a][key], per_id[b][key]) for key in per_id[a] if key in per_id[b]}
            # "worse"/"beats" is read on identity similarity; adherence and leak are shown beside it
            comps[name].update(comps[name]["identity_similarity"])
    result: dict = dict(out)  # metrics["<method>"][...], as the issue names them
    result["comparisons"] = comps
    result["goal_thresholds"] = dict(GOALS)
    result["goals"] = goals(out, comps)
    return result


def run(quick: bool = False, n_identities: int | None = None, images_per_prompt: int | None = None,
        seed: int = 0, bp=None, adapters: dict | None = None, encoder=None, methods: tuple | None = None,
        k: int = E4T_K, eval_steps: int = SAMPLER_STEPS, cfg: float = EVAL_CFG, split: str = "heldout",
        workers: int = 1) -> dict:
    """The metrics dict described in the module doc. ``adapters``: method -> IdentityAdapter (default: the files in
    ``ADAPTERS``). ``workers`` > 1: the identities in that many processes, each with the shipped models."""
    from .harness import collect_in_shards

    n_ids = n_identities or (QUICK_IDENTITIES if quick else FULL_IDENTITIES)
    per_prompt = images_per_prompt or IMAGES_PER_PROMPT
    methods = tuple(methods or METHODS)
    if workers > 1 and (bp is not None or adapters or encoder is not None):
        raise ValueError("workers > 1 runs each process on the shipped models; do not pass bp, adapters or encoder")
    adapters = dict(adapters or {})
    _load_adapters(adapters, methods)
    records = collect_in_shards(collect, workers, n_identities=n_ids, images_per_prompt=per_prompt, seed=seed,
                                bp=bp, adapters=adapters if workers <= 1 else None, encoder=encoder,
                                methods=methods, k=k, eval_steps=eval_steps, cfg=cfg, split=split)
    result = summarize(records)
    result["settings"] = settings_of(split, n_ids, per_prompt, k, eval_steps, cfg, adapters)
    return result


def _default_weight() -> float:
    from ..identity.adapter import DEFAULT_WEIGHT

    return DEFAULT_WEIGHT


def settings_of(split, n_ids, per_prompt, k, eval_steps, cfg, adapters) -> dict:
    return {"split": split, "identities": n_ids, "images_per_prompt": per_prompt, "k": k,
            "references_4ref": N_REFS, "eval_steps": eval_steps, "eval_cfg": cfg, "threshold": _threshold(),
            "adapter_weight": _default_weight(),
            "sem_over": "identities",
            "adapters": {m: a.info.get("command", "?") for m, a in adapters.items()},
            "adapter_steps": {m: a.info.get("steps") for m, a in adapters.items()},
            "face_pipeline": "built-in SynthFace detector, ArcFace alignment (recognizer not used)",
        "words": "adapter methods but adapter_1ref_no_words fold in the identity words the built-in face model "
                 "reads with confidence >= 0.5 (4 references: read on each, merged trait by trait)"}
