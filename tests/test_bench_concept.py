"""``facesmith bench concept``: the JSON the issue asks for, its goal checks, and that they can fail.

A small run (2 held-out identities, 1 image per prompt of 4 sampler steps, few tuning and oracle steps) with the
built-in base, judges and E4T encoder; the helpers (reference leak, standard errors over identities, goals) are also
checked on constructed cases that need no models. The full-size figures are in
``assets/models/facesmith/e4t/bench_concept_full.json`` (speed and quality targets live in benchmarks, not in timed
tests)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from facesmith.core.assets import assets

needs_models = pytest.mark.skipif(
    not all(a.present for a in assets() if a.name in ("base", "judges", "domain-encoder")),
    reason="built-in base / judges / E4T encoder not built (facesmith assets --build)")

METHODS = ("e4t_0", "e4t_k", "e4t_k_words", "textual_inversion", "untrained_encoder", "untrained_encoder_0",
           "oracle")
KEYS = ("identity_similarity", "identity_similarity_sem", "verification_rate", "verification_rate_sem",
        "attribute_adherence", "attribute_adherence_sem", "per_attribute_adherence", "reference_leak",
        "reference_leak_sem", "identity_fact_agreement", "per_fact_agreement", "share_of_oracle",
        "seconds_per_concept", "bytes_per_concept", "n_identities", "n_images")


@pytest.fixture(scope="module")
def models():
    from facesmith.core.bench import concept

    return concept.load_builtin_base(), concept.load_encoder()


@pytest.fixture(scope="module")
def small_run(models):
    from facesmith.core.bench import concept

    bp, encoder = models
    # the rows the tests read (the described rows, tuned longer with the face model, only cost time here)
    return concept.run(quick=True, n_identities=2, images_per_prompt=1, k=2, ti_steps=4, oracle_steps=4, n_views=3,
                       eval_steps=4, measure_overhead=True, overhead_repeats=1, bp=bp, encoder=encoder,
                       methods=METHODS + ("no_concept", "words"))


@needs_models
@pytest.mark.slow
def test_every_method_reports_the_issue_keys(small_run):
    from facesmith.core.synthface.render import TRAIT_NAMES

    for m in METHODS + ("no_concept", "words"):
        row = small_run[m]
        for key in KEYS:
            assert key in row, (m, key)
        assert -1.0 <= row["identity_similarity"] <= 1.0
        for key in ("verification_rate", "attribute_adherence", "reference_leak", "identity_fact_agreement"):
            assert 0.0 <= row[key] <= 1.0 and row[f"{key}_sem"] >= 0.0, (m, key)
        assert set(row["per_attribute_adherence"]) == {"hair", "glasses", "hat", "expression"}
        assert set(row["per_fact_agreement"]) == set(TRAIT_NAMES)  # all 13 traits, not the old 4 facts
        assert row["n_identities"] == 2 and row["n_images"] == 2 * 4  # identities x change prompts x images
        if m not in ("no_concept", "words"):
            assert row["seconds_per_concept"] > 0 and row["bytes_per_concept"] > 0
    assert small_run["no_concept"]["bytes_per_concept"] == 0
    assert small_run["oracle"]["share_of_oracle"] == pytest.approx(1.0)
    assert small_run["e4t_k"]["share_of_oracle"] == pytest.approx(
        small_run["e4t_k"]["identity_similarity"] / small_run["oracle"]["identity_similarity"])
    # E4T concepts and the oracle carry the LoRA (kohya file), textual inversion only an embedding
    for m in ("e4t_k", "oracle"):
        assert small_run[m]["bytes_per_concept"] > 10 * small_run["textual_inversion"]["bytes_per_concept"]
    settings = small_run["settings"]
    assert settings["oracle_steps"] == 4 and settings["eval_steps"] == 4 and settings["sem_over"] == "identities"
    assert isinstance(small_run["generate_overhead"], float) and small_run["generate_seconds_with"] > 0
    json.dumps(small_run)


@needs_models
@pytest.mark.slow
def test_goals_follow_from_the_figures(small_run):
    from facesmith.core.bench.concept import _worse

    e4t, ti, oracle = small_run["e4t_k"], small_run["textual_inversion"], small_run["oracle"]
    goals = small_run["goals"]
    assert goals == {
        "e4t_k_verification_ge_0.60": e4t["verification_rate"] >= 0.60,
        "e4t_k_similarity_ge_0.75_oracle": e4t["identity_similarity"] >= 0.75 * oracle["identity_similarity"],
        "e4t_k_adherence_ge_0.85": e4t["attribute_adherence"] >= 0.85,
        "e4t_k_reference_leak_le_0.10": e4t["reference_leak"] <= 0.10,
        "e4t_k_time_le_ti_over_20": e4t["seconds_per_concept"] <= ti["seconds_per_concept"] / 20,
        "e4t_k_identity_ge_ti": e4t["identity_similarity"] >= ti["identity_similarity"],
        "e4t_k_adherence_ge_ti": e4t["attribute_adherence"] >= ti["attribute_adherence"],
        "untrained_worse": _worse(small_run["untrained_encoder"], e4t),
        "oracle_verification_ge_0.80": oracle["verification_rate"] >= 0.80,
        "overhead_lt_5pct": small_run["generate_overhead"] < 0.05,
    }


@needs_models
@pytest.mark.slow
def test_shards_give_the_figures_of_one_run(models):
    """``bench concept --workers N``: every worker draws the whole plan and keeps its shard, so shards together give
    a single run's per-identity figures (run here in one process; the spawning is tested in test_bench_workers)."""
    from facesmith.core.bench import concept

    bp, encoder = models
    kwargs = dict(n_identities=3, images_per_prompt=1, k=1, eval_steps=2, bp=bp, encoder=encoder,
                  methods=("e4t_k", "no_concept"))
    one = concept.collect(**kwargs)
    parts = concept.collect(**kwargs, shard=(1, 2)) + concept.collect(**kwargs, shard=(0, 2))
    assert [r["index"] for r in parts] == [1, 0, 2]

    def figures(records):
        return [(r["index"], r["identity"], {m: {k: np.asarray(v).tolist() for k, v in f.items() if k != "seconds"}
                                             for m, f in r["methods"].items()})
                for r in sorted(records, key=lambda r: r["index"])]

    assert figures(parts) == figures(one)
    assert concept.summarize(parts)["e4t_k"]["identity_similarity"] == \
        concept.summarize(one)["e4t_k"]["identity_similarity"]


@needs_models
@pytest.mark.slow
def test_oracle_tunes_every_vector_on_every_view(models):
    from facesmith.core.bench import concept
    from facesmith.core.concept.diffusion import latent_stats
    from facesmith.core.concept.personalize import OneImageObjective, _reference, embed_e4t
    from facesmith.core.concept.tokens import vector_tokens
    from facesmith.core.synthface.render import random_attributes, render

    bp, encoder = models
    ref_attrs = random_attributes(np.random.default_rng(0))
    ref = render(3, ref_attrs, bp.native_size, view=0)
    images, captions = concept.oracle_views(3, ref, ref_attrs, bp.native_size, n_views=3)
    assert images.shape[0] == 3 and np.array_equal(images[0], ref) and len(captions) == 3
    assert all(c.startswith("a photo of {token}, with ") for c in captions)
    # oracle_words: the identity's true description right after the token, then the same attributes
    from facesmith.core.synthface.captions import describe_identity
    from facesmith.core.synthface.render import identity_traits

    words = describe_identity(identity_traits(3).facts())
    _, worded = concept.oracle_views(3, ref, ref_attrs, bp.native_size, n_views=3, words=True)
    assert [w.replace(words + ", ", "", 1) for w in worded] == captions
    assert concept.with_words(f"a photo of {concept.TOKEN}, smiling", words, concept.TOKEN) == \
        f"a photo of {concept.TOKEN}, {words}, smiling"
    assert concept.with_words("a photo of x", "", "x") == "a photo of x"
    dp, n = bp.pipe, encoder.cfg.n_vectors
    stats = latent_stats(dp.vae, _reference(bp, images, several=True))
    tokens = vector_tokens(concept.TOKEN, n)
    caps = [c.format(token=concept.TOKEN) for c in captions]
    obj = OneImageObjective(dp, tokens, encoder.class_embedding, torch.zeros_like(encoder.class_embedding), stats,
                            caps, batch_size=16, seed=0)
    assert set(range(obj.start, obj.start + n)) <= set(obj.ids.flatten().tolist())  # every vector in the captions
    _, idx = obj.make_batch(0)
    assert set(idx.tolist()) == {0, 1, 2}  # batches draw from every view
    with pytest.raises(ValueError, match="captions"):
        embed_e4t(encoder, bp, images, token=concept.TOKEN, steps=1, caption=captions[:2])


def _row(sim=0.5, sem=0.01, ver=0.5, adh=0.9, leak=0.05, sec=1.0):
    return {"identity_similarity": sim, "identity_similarity_sem": sem, "verification_rate": ver,
            "attribute_adherence": adh, "reference_leak": leak, "seconds_per_concept": sec}


def test_goals_can_pass_and_fail():
    from facesmith.core.bench.concept import goals

    good = {"e4t_k": _row(sim=0.6, ver=0.7, adh=0.9, leak=0.05, sec=0.5), "oracle": _row(sim=0.7, ver=0.9),
            "textual_inversion": _row(sim=0.3, adh=0.8, sec=20.0), "untrained_encoder": _row(sim=0.2)}
    assert all(goals(good).values()) and len(goals(good)) == 9
    bad = {"e4t_k": _row(sim=0.5, ver=0.59, adh=0.84, leak=0.11, sec=2.0), "oracle": _row(sim=0.7, ver=0.79),
           "textual_inversion": _row(sim=0.6, adh=0.9, sec=20.0), "untrained_encoder": _row(sim=0.49)}
    assert not any(goals(bad).values())
    assert set(goals({"oracle": _row(ver=0.8)})) == {"oracle_verification_ge_0.80"}  # only goals whose rows exist


def test_measurably_worse_needs_a_gap_over_two_standard_errors():
    from facesmith.core.bench.concept import _worse

    method = {"identity_similarity": 0.10, "identity_similarity_sem": 0.01}
    assert _worse({"identity_similarity": 0.05, "identity_similarity_sem": 0.01}, method)      # gap 3.5 s.e.
    assert not _worse({"identity_similarity": 0.08, "identity_similarity_sem": 0.01}, method)  # gap 1.4 s.e.
    assert not _worse({"identity_similarity": 0.12, "identity_similarity_sem": 0.01}, method)  # control better


def test_standard_error_is_over_identities_not_images():
    from facesmith.core.bench.concept import identity_mean_sem

    # identity A: 6 images all 1.0, identity B: 2 images all 0.0 -> identity means 1 and 0
    mean, sem = identity_mean_sem([[1.0] * 6, [0.0] * 2])
    assert mean == pytest.approx(0.5)                      # not the image mean 0.75
    assert sem == pytest.approx(np.std([1.0, 0.0], ddof=1) / np.sqrt(2)) and sem == pytest.approx(0.5)
    images = [1.0] * 6 + [0.0] * 2                        # over images it would be ~0.16
    assert sem > 3 * np.std(images, ddof=1) / np.sqrt(len(images))
    # identical identities: no spread between identities, however noisy the images within each
    assert identity_mean_sem([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]) == (pytest.approx(0.5), pytest.approx(0.0))
    assert identity_mean_sem([[0.3, 0.5], []])[0] == pytest.approx(0.4)  # identities without values are left out
    assert math.isnan(identity_mean_sem([[0.3, 0.5]])[1])             # one identity: no s.e.


class _FakeJudge:
    def __init__(self, seen):
        self.seen = seen

    def predict(self, images):
        assert len(images) == len(self.seen)
        return self.seen


def test_reference_leak_counts_asked_changes_that_keep_the_reference_value(monkeypatch):
    from facesmith.core.bench import concept
    from facesmith.core.judges import metrics
    from facesmith.core.synthface.render import check_attributes

    reference = check_attributes({"hair": "brown", "glasses": False, "hat": False, "expression": "neutral"})
    asked = [{"hair": "red"}, {"hair": "blue"}, {"glasses": True}, {"glasses": True}, {"hat": True},
             {"expression": "smiling"}, {"expression": "smiling"}, {"expression": "surprised"}]
    seen_values = [{"hair": "brown"},          # leak: kept the reference's hair
                   {"hair": "black"},          # wrong, but not the reference's value: no leak
                   {"glasses": False},         # leak
                   {"glasses": True},          # changed as asked
                   {"hat": True},              # changed
                   {"expression": "neutral"},  # leak
                   {"expression": "smiling"},  # changed
                   {"expression": "smiling"}]  # wrong, not the reference: no leak
    seen = [{**reference, **s} for s in seen_values]
    monkeypatch.setattr(metrics, "attribute_judge", lambda: _FakeJudge(seen))
    assert concept.leak_asks(asked[:1] + [{"hair": "brown"}], reference) == [{"hair": "brown"}, {}]
    leak = concept.reference_leak(torch.zeros(len(asked), 8, 8, 3), asked, reference)
    assert leak["mean"] == pytest.approx(3 / 8)
    assert leak["per_attribute"] == pytest.approx({"hair": 1 / 2, "glasses": 1 / 2, "hat": 0.0, "expression": 1 / 3})
    adherence = concept._adherence(torch.zeros(len(asked), 8, 8, 3), asked)
    assert adherence["mean"] == pytest.approx(3 / 8)  # the asked values seen: images 4, 5 and 7
