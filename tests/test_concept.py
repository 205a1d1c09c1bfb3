"""E4T concepts: encoder, domain tuning on the one loop, the Concept conditioner, exports, errors and nodes.

Everything runs on a random-weight SynthFace-shaped base (64 px, built in memory), so it needs no trained assets.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)

from facesmith.core.concept import (BaseMismatch, Concept, embed_e4t, embed_textual_inversion, load_concept,
                                    save_concept, untrained)
from facesmith.core.concept.encoder import DomainEncoder, EncoderConfig, extract_features, preprocess
from facesmith.core.generate import GenerateRequest, generate
from facesmith.core.models import as_base_pipeline
from facesmith.core.progress import Interrupted, Progress
from facesmith.core.synthface import base_model as bm
from facesmith.core.synthface.render import random_attributes, render

ROOT = Path(__file__).resolve().parents[1]


def _base(seed: int = 0, name: str = "rand-base"):
    return as_base_pipeline(bm.make_pipeline(bm.build_components(seed)), name=name)


@pytest.fixture(scope="module")
def base():
    return _base(0)


@pytest.fixture(scope="module")
def image():
    return render(18, random_attributes(np.random.default_rng(0)), 64, view=5)  # a held-out identity


@pytest.fixture(scope="module")
def encoder(base):
    """An encoder with a non-zero domain LoRA (random), so concepts change the UNet too."""
    enc = untrained(base, n_vectors=2, rank=4, seed=1)
    g = torch.Generator().manual_seed(0)
    from facesmith.core.concept.lora import target_module_paths

    lora = {}
    for p in target_module_paths(base.pipe.unet):
        w = base.pipe.unet.get_submodule(p).weight
        lora[p] = (torch.randn(4, w.shape[1], generator=g) * 0.1, torch.randn(w.shape[0], 4, generator=g) * 0.1)
    enc.lora = lora
    return enc


def _gen(bp, prompt, conditioners=(), seed=3):
    return generate(bp, GenerateRequest(prompt=prompt, steps=3, seed=seed, cfg=3.0), conditioners)


def _pool(bp, n_ids=6, views=2, seed=0):
    from facesmith.trainers.e4t import build_pool, synthface_images

    imgs, ids, attrs = synthface_images(n_ids, views, seed)
    return build_pool(bp, imgs, ids, attrs, cfg=EncoderConfig.for_pipeline(bp.pipe))


# ------------------------------------------------------------------------------------------------------- encoder


def test_encoder_features_and_forward_shapes(base, image):
    enc = untrained(base, n_vectors=2)
    x = preprocess(image, 64)
    assert x.shape == (1, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    feats = extract_features(base.pipe, x, enc.cfg)
    assert [f.shape[1] for f in feats] == enc.cfg.feature_channels
    emb, offset = enc.predict(base, image)
    assert emb.shape == (1, 2, bm.TEXT_HIDDEN) and offset.shape == (1, 2, bm.TEXT_HIDDEN)
    assert torch.allclose(emb - offset, enc.class_embedding[None])
    # a different face gives a different offset
    other = render(38, random_attributes(np.random.default_rng(1)), 64, view=1)
    assert not torch.allclose(enc.predict(base, other)[1], offset)


def test_domain_training_reduces_loss_and_restores_unet(base):
    from facesmith.trainers.e4t import DomainObjective, DomainTrainSettings, train_domain_encoder

    pool = _pool(base)
    unet_before = {k: v.clone() for k, v in base.pipe.unet.state_dict().items()}
    s = DomainTrainSettings(steps=30, batch_size=8, learning_rate=3e-3, log_every=0, warmup_steps=1)
    bundle, result = train_domain_encoder(base, pool, s)
    assert result.steps_done == 30 and len(result.loss_history) == 30
    assert bundle.lora and bundle.info["steps"] == 30
    # the shared pipeline is a plain UNet again, weights untouched, nothing left trainable-looking
    assert base.pipe.unet.state_dict().keys() == unet_before.keys()
    assert all(torch.equal(v, unet_before[k]) for k, v in base.pipe.unet.state_dict().items())

    def eval_loss(b):
        from facesmith.core.concept.lora import trainable_lora

        with torch.no_grad(), trainable_lora(base.pipe.unet, b.lora_rank, b.lora_alpha, init=b.lora) as mods:
            obj = DomainObjective(base.pipe, b.encoder, b.class_embedding, pool, mods, 1.0, batch_size=12,
                                  uncond_p=0.0, seed=99)
            return float(np.mean([obj.loss(obj.make_batch(i), i)[1]["denoise"] for i in range(4)]))

    start = untrained(base, rank=4, seed=0)
    start.encoder.set_feature_stats(pool.feats)
    start.lora = {p: (torch.zeros_like(d), torch.zeros_like(u)) for p, (d, u) in bundle.lora.items()}
    assert eval_loss(bundle) < eval_loss(start) * 0.95


def test_domain_batches_pair_views_of_one_identity_or_the_reference_itself(base):
    """Targets are another view of the reference's identity, or (with ``same_p``) the reference image itself."""
    from facesmith.core.concept.lora import trainable_lora
    from facesmith.trainers.e4t import DomainObjective

    pool = _pool(base, n_ids=4, views=3)
    enc = untrained(base, rank=4, seed=0)
    with trainable_lora(base.pipe.unet, 4, 4.0) as mods:
        for same_p, expect_same in ((0.0, False), (1.0, True)):
            obj = DomainObjective(base.pipe, enc.encoder, enc.class_embedding, pool, mods, 1.0, batch_size=16,
                                  seed=3, same_p=same_p)
            for key in range(3):
                b = obj.make_batch(key)
                ref, tgt = b["ref"].numpy(), b["tgt"].numpy()
                assert (pool.identity[ref] == pool.identity[tgt]).all()
                assert (ref == tgt).all() if expect_same else (ref != tgt).all()
            assert torch.equal(obj.make_batch(7)["tgt"], obj.make_batch(7)["tgt"])  # a function of the key


def test_interrupted_training_resumes_from_checkpoint(base, tmp_path):
    from facesmith.trainers.e4t import DomainTrainSettings, train_domain_encoder

    pool = _pool(base, n_ids=3)
    s = DomainTrainSettings(steps=8, batch_size=4, checkpoint_every=3, log_every=0, warmup_steps=1)

    def stop_at(n):
        state = {}

        def on_update(done, total):
            state["done"] = done

        return Progress(on_update=on_update, should_stop=lambda: state.get("done", 0) >= n)

    with pytest.raises(Interrupted):
        train_domain_encoder(base, pool, s, work_dir=str(tmp_path / "w"), progress=stop_at(5))
    assert (tmp_path / "w" / "checkpoint-5" / "trainable.safetensors").exists()
    resumed, r = train_domain_encoder(base, pool, s, work_dir=str(tmp_path / "w"))
    assert r.resumed_from == 5 and r.steps_done == 8 and len(r.loss_history) == 8
    straight, r2 = train_domain_encoder(base, pool, s, work_dir=None)
    assert np.allclose(r.loss_history, r2.loss_history, rtol=1e-4, atol=1e-6)
    for k, v in straight.encoder.state_dict().items():
        assert torch.allclose(v, resumed.encoder.state_dict()[k], atol=1e-5), k


# ------------------------------------------------------------------------------------------------------ concepts


def test_concept_changes_generation_and_restores_pipeline_exactly(base, encoder, image):
    c = embed_e4t(encoder, base, image, token="<fs-a>", steps=2, seed=0)
    assert c.lora and c.n_vectors == 2 and len(c.metadata["loss_history"]) == 2
    prompt = "a photo of <fs-a>, smiling"
    tok, emb_module = base.pipe.tokenizer, base.pipe.text_encoder.get_input_embeddings()
    weights = {k: v.clone() for k, v in base.pipe.unet.state_dict().items()}
    before = _gen(base, prompt)
    with_c = _gen(base, prompt, [c])
    after = _gen(base, prompt)
    assert (with_c - before).abs().max() > 1e-3
    assert torch.equal(before, after)
    assert base.pipe.tokenizer is tok and base.pipe.text_encoder.get_input_embeddings() is emb_module
    assert "<fs-a>" not in tok.get_vocab()
    assert all(torch.equal(v, weights[k]) for k, v in base.pipe.unet.state_dict().items())
    assert torch.equal(_gen(base, prompt, [c]), with_c)  # deterministic
    # the restoring also happens when generation fails inside the context
    with pytest.raises(RuntimeError):
        with c.applied(base):
            raise RuntimeError("boom")
    assert base.pipe.tokenizer is tok and torch.equal(_gen(base, prompt), before)


def test_words_folded_into_a_concept_read_as_the_words_in_the_prompt(base, encoder, image, tmp_path):
    """embed_e4t(words=...): the tuning captions carry the words after the token and the concept's vectors end with
    their word vectors, so "<tok>, smiling" with the worded concept draws exactly what "<tok>, <words>, smiling"
    draws with the same concept tuned on worded captions; the words survive the embedding file."""
    from facesmith.core.concept.export import load_concept, save_concept

    words = "olive skin, oval face, blue eyes"
    worded = embed_e4t(encoder, base, image, token="<fs-w>", steps=2, seed=0, words=words)
    plain = embed_e4t(encoder, base, image, token="<fs-w>", steps=2, seed=0,
                      caption="a photo of {token}, " + words)
    n_words = len(base.pipe.tokenizer(", " + words, add_special_tokens=False).input_ids)
    assert worded.n_vectors == plain.n_vectors + n_words and worded.metadata["words"] == words
    assert torch.equal(worded.embedding[:plain.n_vectors], plain.embedding)
    assert torch.equal(_gen(base, "a photo of <fs-w>, smiling", [worded]),
                       _gen(base, f"a photo of <fs-w>, {words}, smiling", [plain]))
    e, lp = save_concept(worded, tmp_path / "w.safetensors", tmp_path / "w-lora.safetensors")
    again = load_concept(e, lp)
    assert again.n_vectors == worded.n_vectors
    assert torch.allclose(_gen(base, "a photo of <fs-w>, smiling", [again]),
                          _gen(base, "a photo of <fs-w>, smiling", [worded]), atol=1e-5)


class _WeightProbe:
    """A conditioner that records the UNet's attention weights while every conditioner before it is applied."""

    def __init__(self):
        self.seen = None

    def rewrite_prompt(self, prompt):
        return prompt

    @contextlib.contextmanager
    def applied(self, pipe):
        from facesmith.core.concept.lora import target_module_paths

        unet = pipe.pipe.unet
        self.seen = {p: unet.get_submodule(p).weight.detach().clone() for p in target_module_paths(unet)}
        yield


def _attn_weights(bp):
    from facesmith.core.concept.lora import target_module_paths

    unet = bp.pipe.unet
    return {p: unet.get_submodule(p).weight.detach().clone() for p in target_module_paths(unet)}


def _deltas(c):
    from facesmith.core.concept.lora import FusedLora

    return FusedLora(c.lora, c.effective_lora_scale).deltas("cpu", torch.float32)


def test_concepts_of_one_domain_apply_the_domain_lora_once(base, encoder, image):
    a = embed_e4t(encoder, base, image, token="<fs-da>", steps=0)
    b = embed_e4t(encoder, base, image, token="<fs-db>", steps=0, seed=5)
    assert a.domain_id == b.domain_id == encoder.domain_id and len(a.domain_id) == 16
    before = _attn_weights(base)
    domain = _deltas(a)
    probe = _WeightProbe()
    out = _gen(base, "<fs-da> and <fs-db>", [a, b, probe])
    assert out.shape == (1, 64, 64, 3)
    for p, w in probe.seen.items():  # base + the domain offsets once (not twice), up to float rounding
        assert torch.allclose(w, before[p] + domain[p], rtol=0, atol=1e-6), p
        assert not torch.allclose(w, before[p] + 2 * domain[p], rtol=0, atol=1e-4), p
    assert all(torch.equal(w, before[p]) for p, w in _attn_weights(base).items())  # restored bit-exactly
    assert a.lora_scale == b.lora_scale == 1.0 and a._fused is None  # the caller's concepts are untouched
    # three k=0 concepts and a textual-inversion one: still the domain offsets once, the TI concept passes through
    c = embed_e4t(encoder, base, image, token="<fs-dc>", steps=0)
    ti = embed_textual_inversion(base, image, token="<fs-dt>", steps=1)
    prepared = Concept.prepare_conditioners([a, ti, b, c])
    assert prepared[1] is ti and [x.lora_scale for x in prepared[::2]] == [pytest.approx(1 / 3)] * 2
    _gen(base, "<fs-da>, <fs-dt>, <fs-db>, <fs-dc>", [a, ti, b, c, probe])
    assert all(torch.allclose(w, before[p] + domain[p], rtol=0, atol=1e-6) for p, w in probe.seen.items())
    # k-tuned concepts: domain + the mean of their refinements = the mean of their LoRA offsets
    t1 = embed_e4t(encoder, base, image, token="<fs-t1>", steps=1, seed=0)
    t2 = embed_e4t(encoder, base, image, token="<fs-t2>", steps=1, seed=1, lr=3e-3)
    d1, d2 = _deltas(t1), _deltas(t2)
    _gen(base, "<fs-t1> and <fs-t2>", [t1, t2, probe])
    for p, w in probe.seen.items():
        assert torch.allclose(w, before[p] + (d1[p] + d2[p]) / 2, rtol=0, atol=1e-6), p
    assert all(torch.equal(w, before[p]) for p, w in _attn_weights(base).items())


def test_a_single_concept_and_other_domains_are_unchanged(base, encoder, image):
    a = embed_e4t(encoder, base, image, token="<fs-sa>", steps=0)
    other = untrained(base, n_vectors=2, rank=4, seed=1)
    other.lora = {p: (d.clone(), u * 0.5) for p, (d, u) in encoder.lora.items()}
    assert other.domain_id != encoder.domain_id
    o = embed_e4t(other, base, image, token="<fs-so>", steps=0)
    ti = embed_textual_inversion(base, image, token="<fs-st>", steps=1)
    foreign = a.with_token("<fs-sf>")
    foreign.metadata.pop("domain_id")  # e.g. a LoRA made elsewhere
    for group in ([a], [a, o], [a, ti], [a, foreign]):
        assert all(x is y for x, y in zip(Concept.prepare_conditioners(group), group))
    before = _attn_weights(base)
    probe = _WeightProbe()
    with a._fused_lora().applied(base.pipe.unet):
        direct = _attn_weights(base)
    _gen(base, "a photo of <fs-sa>", [a, probe])
    assert all(torch.equal(w, direct[p]) for p, w in probe.seen.items())  # exactly the full LoRA, as before
    assert all(torch.equal(w, before[p]) for p, w in _attn_weights(base).items())
    # the domain id is stable: same LoRA -> same id, also after a save/load of the encoder; a changed LoRA -> new id
    enc_path = Path(pytest.importorskip("tempfile").mkdtemp()) / "enc.safetensors"
    encoder.save(enc_path)
    assert DomainEncoder.load(enc_path).domain_id == encoder.domain_id
    first = other.domain_id
    with torch.no_grad():
        next(iter(other.lora.values()))[1].mul_(2)
    assert other.domain_id != first


def test_textual_inversion_changes_only_the_embedding(base, image):
    c = embed_textual_inversion(base, image, token="<fs-ti>", steps=3, seed=0)
    assert c.method == "textual_inversion" and c.lora is None and c.embedding.shape == (1, bm.TEXT_HIDDEN)
    from facesmith.core.concept.tokens import class_embedding

    start = class_embedding(base.pipe.tokenizer, base.pipe.text_encoder)
    assert not torch.allclose(c.embedding, start)
    assert (_gen(base, "a photo of <fs-ti>", [c]) - _gen(base, "a photo of <fs-ti>")).abs().max() > 1e-4


def test_embedding_and_kohya_lora_round_trip(base, encoder, image, tmp_path):
    from facesmith.core.formats import load_safetensors, read_safetensors_metadata

    c = embed_e4t(encoder, base, image, token="<fs-rt>", steps=0)
    c.lora_alpha = 2.0  # alpha != rank: the file must carry the real alpha
    emb_path, lora_path = save_concept(c, tmp_path / "emb" / "x.safetensors", tmp_path / "lora" / "x.safetensors")
    tensors, meta = load_safetensors(emb_path)
    assert list(tensors) == ["emb_params"] and tuple(tensors["emb_params"].shape) == (2, bm.TEXT_HIDDEN)
    assert meta["token"] == "<fs-rt>" and meta["base_fingerprint"] == base.fingerprint
    lt, _ = load_safetensors(lora_path)
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert f"{key}.lora_down.weight" in lt and f"{key}.lora_up.weight" in lt
    assert float(lt[f"{key}.alpha"]) == 2.0
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in lt
    assert all(k.startswith("lora_unet_") for k in lt) and len(lt) == 3 * len(c.lora)
    back = load_concept(emb_path, lora_path)
    assert back.token == c.token and back.lora_alpha == 2.0 and back.lora_rank == 4 and back.lora_scale == 1.0
    # the domain identity travels as a plain string in both files and comes back from the LoRA file
    assert meta["domain_id"] == c.domain_id == encoder.domain_id
    assert read_safetensors_metadata(lora_path)["domain_id"] == c.domain_id
    assert back.domain_id == c.domain_id and back.metadata["domain_id"] == c.domain_id
    assert load_concept(emb_path).domain_id is None and "domain_id" not in load_concept(emb_path).metadata
    assert set(back.lora) == set(c.lora)
    prompt = "a photo of <fs-rt> wearing a hat"
    assert torch.equal(_gen(base, prompt, [back]), _gen(base, prompt, [c]))
    with pytest.raises(FileExistsError):
        save_concept(c, emb_path, lora_path)
    save_concept(c, emb_path, lora_path, overwrite=True)


def test_token_collisions_and_missing_token_are_clear_errors(base, encoder, image):
    with pytest.raises(ValueError, match="already a word"):
        embed_e4t(encoder, base, image, token="person")
    with pytest.raises(ValueError, match="lowercase"):
        embed_e4t(encoder, base, image, token="<Bob>")
    c1 = embed_e4t(encoder, base, image, token="<fs-x>")
    c2 = embed_e4t(encoder, base, image, token="<fs-x>")
    with pytest.raises(ValueError, match="another concept"):
        _gen(base, "a photo of <fs-x>", [c1, c2])
    with pytest.raises(ValueError, match="does not contain the concept token"):
        _gen(base, "a photo of a person", [c1])
    # a failed apply leaves nothing behind
    assert "<fs-x>" not in base.pipe.tokenizer.get_vocab()
    # two different concepts work together
    c3 = embed_textual_inversion(base, image, token="<fs-y>", steps=1)
    out = _gen(base, "<fs-x> and <fs-y>", [c1, c3])
    assert out.shape == (1, 64, 64, 3)


def test_mismatched_base_is_refused(base, encoder, image):
    other = _base(7, name="other-base")
    assert other.fingerprint != base.fingerprint
    with pytest.raises(BaseMismatch, match="encoder was trained for base 'rand-base'"):
        embed_e4t(encoder, other, image)
    c = embed_e4t(encoder, base, image, token="<fs-m>")
    with pytest.raises(BaseMismatch, match=f"fingerprint {base.fingerprint}.*'other-base' \\({other.fingerprint}\\)"):
        _gen(other, "a photo of <fs-m>", [c])
    # saved and reloaded domain encoders keep their base
    enc_path = Path(pytest.importorskip("tempfile").mkdtemp()) / "enc.safetensors"
    encoder.save(enc_path)
    loaded = DomainEncoder.load(enc_path)
    assert loaded.base_fingerprint == base.fingerprint and set(loaded.lora) == set(encoder.lora)
    assert torch.allclose(loaded.predict(base, image)[0], encoder.predict(base, image)[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- nodes


def test_node_contract_and_round_trip_through_nodes(base, image, tmp_path):
    from facesmith.core import paths
    from facesmith.core.images import numpy_to_comfy

    import importlib

    nodes = importlib.import_module("facesmith.nodes.concept_nodes")
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert "required" in spec and callable(getattr(cls, cls.FUNCTION))
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) and name in nodes.NODE_DISPLAY_NAME_MAPPINGS
    paths.set_models_dir(tmp_path / "models")
    try:
        res = nodes.FaceSmithTrainDomainEncoder().train(
            base, "synthface", "", 3, 2, 4, 4, 1e-3, 2, 1e-2, 1e-3, 0, "no", False, True, "t-enc", False)
        enc, graph, path = res["result"]
        assert res["ui"]["text"][0].startswith(f"saved {path}\n4 steps")  # shown on the node by web/facesmith.js
        assert Path(path).exists() and graph.shape[0] == 1 and graph.shape[-1] == 3
        assert "e4t/t-enc.safetensors" in nodes.list_encoders()
        (loaded,) = nodes.FaceSmithLoadDomainEncoder().load("e4t/t-enc.safetensors")
        assert loaded.info["steps"] == 4 and loaded.base_fingerprint == base.fingerprint
        with pytest.raises(ValueError, match="Train Domain Encoder \\(FaceSmith\\): input 'name'"):
            nodes.FaceSmithTrainDomainEncoder().train(
                base, "synthface", "", 3, 2, 4, 4, 1e-3, 2, 1e-2, 1e-3, 0, "no", False, True, "t-enc", False)
        img = numpy_to_comfy(image[None])
        (cs,) = nodes.FaceSmithEmbedConcept().embed(base, img, "e4t", "<fs-n>", 1, 1e-3, False, 0, encoder=loaded)
        (cs,) = nodes.FaceSmithEmbedConcept().embed(base, img, "textual_inversion", "<fs-t>", 2, 5e-3, False, 0,
                                                    concepts=cs)
        assert [c.token for c in cs] == ["<fs-n>", "<fs-t>"]
        with pytest.raises(ValueError, match="Embed Concept \\(FaceSmith\\): input 'token'"):
            nodes.FaceSmithEmbedConcept().embed(base, img, "e4t", "<fs-n>", 0, 1e-3, False, 0, encoder=loaded,
                                                concepts=cs)
        with pytest.raises(ValueError, match="Embed Concept \\(FaceSmith\\): encoder was trained for base"):
            nodes.FaceSmithEmbedConcept().embed(_base(7, "other"), img, "e4t", "<fs-o>", 0, 1e-3, False, 0,
                                                encoder=loaded)
        res = nodes.FaceSmithSaveConcept().save(cs, "pair", False)
        emb_paths, lora_paths = res["result"]
        assert emb_paths.splitlines()[0].endswith("embeddings/pair.safetensors")
        assert lora_paths.split("\n")[0].endswith("loras/pair.safetensors") and lora_paths.split("\n")[1] == ""
        with pytest.raises(ValueError, match="Save Concept \\(FaceSmith\\): input 'name'"):
            nodes.FaceSmithSaveConcept().save(cs, "pair", False)
        (back,) = nodes.FaceSmithLoadConcept().load("pair.safetensors", "auto", "", 1.0)
        (back,) = nodes.FaceSmithLoadConcept().load("pair_2.safetensors", "none", "", 1.0, concepts=back)
        assert [c.token for c in back] == ["<fs-n>", "<fs-t>"] and back[0].lora and back[1].lora is None
        prompt = "<fs-n> next to <fs-t>"
        assert torch.equal(_gen(base, prompt, back), _gen(base, prompt, cs))
    finally:
        paths.set_models_dir(None)


def test_workflows_are_consistent_with_their_api_twins():
    for name in ("e4t_train_domain_encoder", "e4t_personalize"):
        ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
        api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
        assert ui["version"] == 0.4 and ui["nodes"] and ui["links"]
        ui_types = sorted(n["type"] for n in ui["nodes"])
        assert ui_types == sorted(v["class_type"] for v in api.values())
        for link in ui["links"]:
            lid, src, _, dst, _, _ = link
            node = next(n for n in ui["nodes"] if n["id"] == dst)
            assert any(i.get("link") == lid for i in node.get("inputs", []))
            assert str(src) in api and str(dst) in api


def test_face_crop_errors_clearly_without_a_face_and_frames_a_found_one(base, image, monkeypatch):
    import importlib

    from facesmith.core import faces
    from facesmith.core.images import numpy_to_comfy

    nodes = importlib.import_module("facesmith.nodes.concept_nodes")
    img = numpy_to_comfy(image[None])

    def no_face(*a, **k):
        raise faces.NoFaceError("no face detected in the image (backend 'synthface')")

    monkeypatch.setattr(faces, "detect", no_face)
    with pytest.raises(ValueError, match="Embed Concept \\(FaceSmith\\): input 'image' no face detected"):
        nodes.FaceSmithEmbedConcept().embed(base, img, "textual_inversion", "<fs-f>", 1, 1e-3, True, 0)
    monkeypatch.setattr(faces, "detect", lambda *a, **k: [])
    with pytest.raises(ValueError, match="input 'image' has no face"):
        nodes.FaceSmithEmbedConcept().embed(base, img, "textual_inversion", "<fs-f>", 1, 1e-3, True, 0)
    monkeypatch.setattr(faces, "detect", lambda *a, **k: [(np.array([20, 16, 44, 48], np.float32), None, 0.9)])
    crop = nodes._face_crop("n", img)
    assert crop.shape == (52, 52, 3) and crop.dtype == np.uint8  # 1.6 x the 32 px box, centred on it
