"""The identity world: identities as distinct trait combinations with words, and the base trainer's recipe records."""
from __future__ import annotations

import json

import numpy as np
import pytest


def test_identities_are_distinct_trait_combinations_that_render_from_their_facts(facesmith):
    from facesmith.core.synthface import render as R

    facts = [tuple(R.identity_traits(i).facts().values()) for i in range(R.IDENTITY_COUNT)]
    assert len(set(facts)) == R.IDENTITY_COUNT  # no two people are the same person
    assert R.trait_combinations() == int(np.prod([len(v) for v in R.TRAIT_VOCAB.values()]))
    t = R.identity_traits(321)
    again = R.traits_from_facts(t.facts(), 321)
    assert again == t  # the facts ARE the identity: nothing else about a person is drawn
    # every trait value is used across the held-out split (the vocabulary is not decoration)
    from facesmith.core.synthface.splits import identities

    held = [R.identity_traits(i).facts() for i in identities("heldout")]
    for name, values in R.TRAIT_VOCAB.items():
        assert {f[name] for f in held} == set(values), name
    with pytest.raises(ValueError, match="eye_colour"):
        R.traits_from_facts(dict(t.facts(), eye_colour="purple"))


def test_each_trait_changes_the_picture(facesmith):
    from facesmith.core.synthface import render as R

    base = R.identity_traits(7).facts()
    img = R.render_facts(base, {}, 64)
    for name, values in R.TRAIT_VOCAB.items():
        for v in values:
            if v == base[name]:
                continue
            other = R.render_facts(dict(base, **{name: v}), {}, 64)
            assert np.abs(other.astype(int) - img.astype(int)).sum() > 0, (name, v)


def test_descriptions_read_back_and_fit_the_text_encoder(facesmith):
    from facesmith.core.synthface import base_model as bm
    from facesmith.core.synthface import captions as C
    from facesmith.core.synthface import render as R

    tok = bm.load_tokenizer()
    longest = 0
    for i in range(0, R.IDENTITY_COUNT, 97):
        f = R.identity_traits(i).facts()
        text = C.caption({"expression": "neutral", "hair": "white", "background": "yellow", "beard": True},
                         identity=f)
        assert C.parse_identity(text) == f
        assert C.parse_caption(text)["hair"] == "white"
        longest = max(longest, len(tok(text).input_ids))
    assert longest <= tok.model_max_length  # a full description plus all six attributes is never truncated
    assert C.caption({}, mention=[], identity=R.identity_traits(1).facts(), identity_mention=[]) == "a photo of a person"


def test_cached_caption_ids_equal_the_tokenizer(facesmith):
    from facesmith.core.synthface import base_model as bm
    from facesmith.core.synthface import captions as C
    from facesmith.core.synthface import render as R
    from facesmith.trainers.base_model import CachedCaptionIds

    tok = bm.load_tokenizer()
    rng = np.random.default_rng(0)
    caps = ["" if i % 9 == 0 else C.caption(R.random_attributes(rng), mention=C.random_mention(rng, 0.8),
                                            identity=R.identity_traits(i).facts(),
                                            identity_mention=C.random_mention(rng, 0.7, R.TRAIT_NAMES))
            for i in range(300)]
    want = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids
    assert (CachedCaptionIds(tok)(caps) == want).all()


def test_base_batches_depend_only_on_the_step(facesmith):
    import torch

    from facesmith.core.synthface import base_model as bm
    from facesmith.trainers.base_model import TextToImageObjective, VaeObjective

    comps = bm.build_components(0)
    images = np.random.default_rng(0).integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)
    vae = VaeObjective(comps["vae"], images, batch_size=3, seed=5)
    a, b = vae.make_batch(4), vae.make_batch(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], vae.make_batch(5)[0])
    lat = torch.randn(12, 8, 16, 16)
    obj = TextToImageObjective(comps["unet"], comps["text_encoder"], comps["tokenizer"], comps["scheduler"], lat,
                               [{}] * 12, np.arange(12), batch_size=4, seed=3, scaling=1.0)
    a, b = obj.make_batch(7), obj.make_batch(7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], obj.make_batch(8)[1])


@pytest.mark.slow  # builds a base model end to end (timed probes + two training stages)
def test_time_budget_resolves_to_a_recorded_step_count(facesmith, tmp_path, monkeypatch):
    from functools import partial

    from facesmith.core.training.loop import fit_steps
    from facesmith.trainers import base_model
    from facesmith.trainers.base_model import BaseSettings, build_base
    from facesmith.trainers.e4t_cli import resolved_argv

    # the timing probe itself, with 3 timed steps instead of 40 (the full-size base makes each step slow on CI)
    monkeypatch.setattr(base_model, "fit_steps", partial(fit_steps, probe_steps=3, warmup=1))

    s = BaseSettings(pool=64, vae_steps=1000, vae_seconds=0.5, unet_steps=1000, unet_seconds=0.5, vae_batch=2,
                     unet_batch=2, workers=1)
    out = build_base(tmp_path / "base", tmp_path / "work", s)
    rec = json.loads((out / "facesmith_train.json").read_text())
    assert "--unet-seconds" not in rec["command"] and "--vae-seconds" not in rec["command"]
    steps = rec["unet_text_steps"]
    assert 1 <= steps < 1000 and f"--unet-steps {steps}" in rec["command"]
    assert rec["settings"]["unet_steps"] == steps and rec["vae"]["steps"] == rec["settings"]["vae_steps"]
    # a continued stage keeps the VAE (and its latent scale) and records what it continues
    s2 = BaseSettings(pool=64, unet_steps=2, unet_batch=2, workers=1, seed=1, init_from=str(out))
    out2 = build_base(tmp_path / "base2", tmp_path / "work2", s2)
    rec2 = json.loads((out2 / "facesmith_train.json").read_text())
    assert rec2["continues"]["command"] == rec["command"]
    assert rec2["latent_scaling_factor"] == rec["latent_scaling_factor"]
    assert f"--init-from {out}" in rec2["command"]
    assert resolved_argv(["--synthface", "--steps", "99", "--seconds", "40", "--lr", "1"], 7) == \
        ["--synthface", "--lr", "1", "--steps", "7"]


def test_readme_documents_every_identity_phrase(facesmith):
    from pathlib import Path

    from facesmith.core.synthface.captions import TRAIT_PHRASES

    readme = (Path(facesmith.__path__[0]) / "README.md").read_text()
    missing = [p for d in TRAIT_PHRASES.values() for p in d.values() if f"`{p}`" not in readme]
    assert not missing, f"README's identity vocabulary lacks {missing}"
