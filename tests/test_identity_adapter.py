"""The identity adapter (issue 15): its conditioner on the one Generate path, files, errors and training objective.

Runs on the built-in base with an UNTRAINED adapter and a randomly initialised face encoder: these tests check the
mechanics (what is patched and restored, what each option changes, what training draws); the shipped adapter's
quality is measured by ``facesmith bench identity``."""
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def world(facesmith):
    from facesmith.core.bench.base import load_builtin_base
    from facesmith.core.identity.adapter import new_adapter
    from facesmith.core.identity.face_encoder import ARCH, FaceEncoder
    from facesmith.core.judges.nets import RecognizerNet
    from facesmith.core.synthface.render import random_attributes, render

    torch.manual_seed(0)
    bp = load_builtin_base()
    fe = FaceEncoder(RecognizerNet(ARCH["dim"], tuple(ARCH["widths"]), tuple(ARCH["blocks"])), 0.5, {}, None)
    adapter = new_adapter(bp, fe, seed=3)
    with torch.no_grad():  # an untrained adapter starts silent (zero offsets); give it a visible effect
        for p in adapter.net.id_head.parameters():
            p.normal_(0, 0.2)
        for m in list(adapter.net.to_v_ip):
            m.weight.mul_(5)
    rng = np.random.default_rng(0)
    refs = np.stack([render(5, random_attributes(rng), 64, view=v) for v in range(3)])
    return bp, adapter, refs


def _gen(bp, conds, prompt="a photo of a person, smiling", seed=0, cfg=4.0):
    from facesmith.core.generate import GenerateRequest, generate

    req = GenerateRequest(prompt=prompt, seed=seed, steps=4, cfg=cfg, width=64, height=64, scheduler="dpmpp_2m")
    return generate(bp, req, conditioners=conds)


def _crops(refs):
    from facesmith.core.identity import face_pipeline as fp

    return fp.analyze(refs, fp.FaceSettings(recognizer="none")).crops


def test_identity_conditioner_patches_and_restores(world):
    from facesmith.core.identity.adapter import IdentityConditioner

    bp, adapter, refs = world
    before = _gen(bp, [])
    procs = {k: type(v) for k, v in bp.pipe.unet.attn_processors.items()}
    ident = adapter.identity(bp, _crops(refs[:1]))
    cond = IdentityConditioner(adapter, ident)
    assert cond.rewrite_prompt("a photo of a person, smiling").startswith("a photo of <identity>")
    with_id = _gen(bp, [cond])
    assert (with_id - before).abs().max() > 1e-3  # the identity changes the image
    # everything restored: processors, no hook state, same image bit for bit
    assert {k: type(v) for k, v in bp.pipe.unet.attn_processors.items()} == procs
    assert not hasattr(bp.pipe.unet, "_facesmith_identity_state")
    assert torch.equal(_gen(bp, []), before)
    # weight 0 and an all-zero mask switch the attention branch off: same image as the bare class-word token
    from facesmith.core.identity.adapter import AttentionEntry, attached

    zero = IdentityConditioner(adapter, ident, weight=0.0)
    masked_off = IdentityConditioner(adapter, ident, weight=0.0)
    a = _gen(bp, [zero])
    b = _gen(bp, [masked_off])
    assert torch.equal(a, b)
    entry = AttentionEntry(net=adapter.net, ctx=ident.ctx[None], mask=torch.zeros(64, 64))
    with attached(bp.pipe.unet, entry, pipe=bp.pipe):
        c = _gen(bp, [zero])
    assert torch.allclose(a, c, atol=1e-6)


def test_start_end_and_cfg_halves(world):
    from facesmith.core.identity.adapter import AttentionEntry, attached

    bp, adapter, refs = world
    ident = adapter.identity(bp, _crops(refs[:1]))
    plain = _gen(bp, [])
    # a window that no sampling step falls into (start = end = 1.0 is the very end) leaves the image unchanged
    entry = AttentionEntry(net=adapter.net, ctx=ident.ctx[None], start_at=1.0, end_at=1.0)
    with attached(bp.pipe.unet, entry, pipe=bp.pipe):
        late = _gen(bp, [])
    assert torch.allclose(plain, late, atol=1e-6)
    # under classifier-free guidance only the conditional half is conditioned: cfg=1 (no unconditional branch)
    # and cfg=4 both change the image
    entry = AttentionEntry(net=adapter.net, ctx=ident.ctx[None])
    with attached(bp.pipe.unet, entry, pipe=bp.pipe) as state:
        seen = []
        state.contribution, orig = (lambda i, attn, h: seen.append(h.shape[0]) or orig(i, attn, h)), \
            state.contribution
        _gen(bp, [], cfg=4.0)
    assert seen and all(n == 2 for n in seen)  # batch of [uncond, cond]


def test_combine_modes_and_identity_file(world, tmp_path):
    from facesmith.core.identity.adapter import AdapterMismatch, Identity, IdentityAdapter, IdentityConditioner

    bp, adapter, refs = world
    crops = _crops(refs)
    avg = adapter.identity(bp, crops, "average")
    norm = adapter.identity(bp, crops, "norm average")
    cat = adapter.identity(bp, crops, "concat")
    n_ctx = adapter.cfg.n_ctx
    assert avg.ctx.shape == (n_ctx, adapter.cfg.cross_dim) and cat.ctx.shape == (3 * n_ctx, adapter.cfg.cross_dim)
    assert not torch.allclose(avg.offsets, norm.offsets)
    assert avg.n_references == 3
    with pytest.raises(ValueError, match="combine"):
        adapter.identity(bp, crops, "median")
    # identity file round trip: no photo and no face embedding inside
    path = avg.save(tmp_path / "me.safetensors")
    back = Identity.load(path)
    assert torch.equal(back.offsets, avg.offsets) and torch.equal(back.ctx, avg.ctx)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"offsets", "ctx"}
    with pytest.raises(FileExistsError):
        avg.save(tmp_path / "me.safetensors")
    # adapter file round trip gives the same identity; another adapter refuses this identity
    apath = adapter.save(tmp_path / "ad.safetensors")
    again = IdentityAdapter.load(apath)
    assert again.adapter_id == adapter.adapter_id
    assert again.face_encoder.arch == adapter.face_encoder.arch and again.face_encoder.dim == adapter.face_encoder.dim
    assert torch.allclose(again.identity(bp, crops).ctx, avg.ctx, atol=1e-5)
    other = IdentityAdapter.load(apath)
    with torch.no_grad():
        other.net.face_token.bias.add_(1.0)
    with pytest.raises(AdapterMismatch, match="adapter"):
        IdentityConditioner(other, avg)
    other.base_fingerprint = "0123456789abcdef"
    with pytest.raises(AdapterMismatch, match="0123456789abcdef"):
        other.identity(bp, crops)


def test_two_identities_share_one_patch(world):
    from facesmith.core.identity.adapter import IdentityConditioner

    bp, adapter, refs = world
    a = adapter.identity(bp, _crops(refs[:1]))
    left, right = torch.zeros(64, 64), torch.zeros(64, 64)
    left[:, :32], right[:, 32:] = 1, 1
    c1 = IdentityConditioner(adapter, a, token="<id-a>", mask=left)
    c2 = IdentityConditioner(adapter, a, token="<id-b>", mask=right)
    img = _gen(bp, [c1, c2], prompt="a photo of <id-a> and <id-b>")
    assert torch.isfinite(img).all()
    assert not hasattr(bp.pipe.unet, "_facesmith_identity_state")


def test_objective_batches_and_learning(world):
    from facesmith.core.concept.diffusion import frozen
    from facesmith.core.identity.adapter import new_adapter
    from facesmith.core.synthface.render import random_attributes, render
    from facesmith.trainers.identity_adapter import IdentityAdapterObjective, build_face_pool

    bp, adapter, _ = world
    rng = np.random.default_rng(1)
    ids = [3, 3, 3, 3, 8, 8, 8, 8]
    attrs = [random_attributes(rng) for _ in ids]
    images = np.stack([render(i, a, 64, view=k) for k, (i, a) in enumerate(zip(ids, attrs))])
    pool = build_face_pool(bp, adapter.face_encoder, images, ids, attrs)
    fresh = new_adapter(bp, adapter.face_encoder, seed=1)
    mix = IdentityAdapterObjective(bp.pipe, fresh, pool, batch_size=8, n_refs=2, uncond_p=0.0)
    b = mix.make_batch(0)
    for t, r in zip(b["tgt"].tolist(), b["refs"].tolist()):
        assert all(pool.identity[x] == pool.identity[t] and x != t for x in r)  # other renders, same person
    assert torch.equal(mix.make_batch(0)["refs"], b["refs"])  # a function of the step (exact resume)
    # identity_p: captions also name the target's VISIBLE identity traits in words (never one a 64 px face model
    # cannot read), each with that probability; 0 names none
    from facesmith.core.synthface.captions import parse_identity
    from facesmith.core.synthface.render import identity_traits
    from facesmith.trainers.identity_adapter import VISIBLE_TRAITS

    assert set(VISIBLE_TRAITS) & {"brow_shape", "nose_shape"} == set()
    worded = IdentityAdapterObjective(bp.pipe, fresh, pool, batch_size=8, uncond_p=0.0, identity_p=1.0)
    r = np.random.default_rng(0)
    for row in (0, 5):
        named = parse_identity(worded.caption(row, r).replace(worded.token_text, ""))
        facts = identity_traits(int(pool.identity[row])).facts()
        assert set(named) == set(VISIBLE_TRAITS) and all(facts[t] == v for t, v in named.items())
        assert not parse_identity(mix.caption(row, r))
    no_mix = IdentityAdapterObjective(bp.pipe, fresh, pool, batch_size=8, mix=False)
    nb = no_mix.make_batch(0)
    assert torch.equal(nb["refs"][:, 0], nb["tgt"])
    # a few steps on one fixed batch lower its loss: gradients reach the adapter through the patched UNet
    opt = torch.optim.Adam(fresh.net.parameters(), 3e-3)
    with frozen(bp.pipe.unet, bp.pipe.text_encoder, bp.pipe.vae):
        first = None
        for _ in range(8):
            loss, logs = mix.loss(b, 0)
            first = first if first is not None else float(loss)
            opt.zero_grad()
            loss.backward()
            assert fresh.net.to_k_ip[0].weight.grad is not None
            opt.step()
        assert "id" in logs
    assert float(mix.loss(b, 0)[0]) < first
    assert not hasattr(bp.pipe.unet, "_facesmith_identity_state")


def test_nodes_apply_save_load_and_errors(world, tmp_path, monkeypatch):
    from facesmith.core import paths
    from facesmith.core.identity import face_pipeline as fp
    from facesmith.nodes.identity_adapter_nodes import (FaceSmithApplyIdentity, FaceSmithLoadIdentity,
                                                        FaceSmithSaveIdentity)
    from facesmith.nodes.identity_nodes import FaceSmithMergeFaces

    bp, adapter, refs = world
    monkeypatch.setenv("FACESMITH_MODELS", str(tmp_path / "models"))
    faces = [fp.analyze(refs[i:i + 1], fp.FaceSettings(recognizer="none")) for i in range(3)]
    merged, = FaceSmithMergeFaces().run(faces[0], faces[1], faces_4=faces[2])
    assert len(merged) == 3 and merged.num_images == 3 and merged.image_index.tolist() == [0, 1, 2]
    apply = FaceSmithApplyIdentity()
    res = apply.apply(bp, adapter, "<identity>", 1.0, 0.0, 1.0, "average", faces=merged)
    concepts, ident = res["result"]
    assert ident.n_references == 3 and len(concepts) == 1
    assert "from 3 face(s)" in res["ui"]["text"][0]
    # a second identity appends; the same token twice is refused, naming the input
    more, _ = apply.apply(bp, adapter, "<other>", 0.8, 0.0, 0.6, "concat", identity=ident,
                          concepts=concepts)["result"]
    assert [c.token for c in more] == ["<identity>", "<other>"]
    with pytest.raises(ValueError, match=r"Apply Identity \(FaceSmith\).*token"):
        apply.apply(bp, adapter, "<identity>", 1.0, 0.0, 1.0, "average", identity=ident, concepts=concepts)
    with pytest.raises(ValueError, match="faces.*identity"):
        apply.apply(bp, adapter, "<identity>", 1.0, 0.0, 1.0, "average")
    assert "end_at" in FaceSmithApplyIdentity.VALIDATE_INPUTS(start_at=0.8, end_at=0.2)
    assert FaceSmithApplyIdentity.VALIDATE_INPUTS(start_at=0.2, end_at=0.8, token="<ok>") is True
    # save -> list -> load; traversal and silent overwrite refused
    saved = FaceSmithSaveIdentity().save(ident, "me", False)
    path = saved["result"][0]
    assert path.startswith(str(tmp_path / "models")) and "identities" in path
    with pytest.raises(ValueError, match="overwrite"):
        FaceSmithSaveIdentity().save(ident, "me", False)
    assert "name" in FaceSmithSaveIdentity.VALIDATE_INPUTS(name="../../evil")
    loaded, = FaceSmithLoadIdentity().load("identities/me.safetensors")
    assert torch.equal(loaded.ctx, ident.ctx)
    assert paths.find("facesmith", "identities/me.safetensors") is not None


def test_identity_words_fold_into_the_token(world, tmp_path):
    """Words for who the person is (Face Describe's identity_words -> Apply Identity's words) make the token read as
    '<token>, words': the same image as writing the words after the token, through a saved identity too."""
    from facesmith.core.identity.adapter import Identity, IdentityConditioner
    from facesmith.nodes.identity_adapter_nodes import FaceSmithApplyIdentity

    bp, adapter, refs = world
    ident = adapter.identity(bp, _crops(refs[:1]))
    words = "dark skin, round face, green eyes"
    described = ident.described(bp, words)
    assert described.words == words and described.word_vectors.shape[0] >= 6
    assert ident.described(bp, "  ").word_vectors is None  # no words: the plain identity
    folded = _gen(bp, [IdentityConditioner(adapter, described)], prompt="a photo of <identity>, smiling")
    written = _gen(bp, [IdentityConditioner(adapter, ident)], prompt=f"a photo of <identity>, {words}, smiling")
    plain = _gen(bp, [IdentityConditioner(adapter, ident)], prompt="a photo of <identity>, smiling")
    assert torch.allclose(folded, written, atol=1e-5)
    assert (folded - plain).abs().max() > 1e-2  # the words change the image
    back = Identity.load(described.save(tmp_path / "described.safetensors"))
    assert back.words == words and torch.equal(back.word_vectors, described.word_vectors)
    assert torch.allclose(_gen(bp, [IdentityConditioner(adapter, back)], prompt="a photo of <identity>, smiling"),
                          folded, atol=1e-6)
    # the node: several lines (a batch of photos) merge trait by trait; the report names the words
    res = FaceSmithApplyIdentity().apply(bp, adapter, "<identity>", 1.0, 0.0, 1.0, "average", identity=ident,
                                         words="dark skin, round face\ndark skin, oval face\nlight skin, round face")
    made = res["result"][1]
    assert made.words == "dark skin, round face" and "words: dark skin, round face" in res["ui"]["text"][0]
    # an adapter trained with words, used without them: the node says to connect them
    info = dict(adapter.info)
    adapter.info = dict(info, hyper_parameters={"identity_p": 0.7})
    try:
        text = FaceSmithApplyIdentity().apply(bp, adapter, "<identity>", 1.0, 0.0, 1.0, "average",
                                              identity=ident)["ui"]["text"][0]
    finally:
        adapter.info = info
    assert "connect Face Describe's identity_words" in text


def test_merged_words():
    from facesmith.core.understand.check import merged_words

    assert merged_words("") == "" and merged_words("olive skin, oval face") == "olive skin, oval face"
    assert merged_words(["dark skin, round face", "dark skin", "light skin, green eyes"]) == \
        "dark skin, round face, green eyes"
    # words outside the SynthFace vocabulary (a real base): the first line, as typed
    assert merged_words("freckles, grey beard\ndark skin") == "freckles, grey beard"


def test_train_node_with_identity_words(world, tmp_path, monkeypatch):
    """Train Identity Adapter (tiny run): identity_words_p reaches the trainer and the saved file, and Apply Identity
    then asks for words when none are connected."""
    from facesmith.core.identity.adapter import IdentityAdapter
    from facesmith.nodes.identity_adapter_nodes import FaceSmithApplyIdentity, FaceSmithTrainIdentityAdapter

    bp, _, refs = world
    monkeypatch.setenv("FACESMITH_MODELS", str(tmp_path / "models"))
    train = FaceSmithTrainIdentityAdapter().train
    # a bad setting names the node input it came from, before any work
    with pytest.raises(ValueError, match=r"Train Identity Adapter \(FaceSmith\).*'identity_words_p'"):
        train(bp, 2, 2, 2, 2, 1e-3, 1, True, 0.5, 0, False, "tiny", False, identity_words_p=1.5)
    with pytest.raises(ValueError, match="'identity_loss_weight'"):
        train(bp, 2, 2, 2, 2, 1e-3, 1, True, -1.0, 0, False, "tiny", False)
    out = train(bp, 2, 2, 2, 2, 1e-3, 1, True, 0.5, 0, False, "tiny", False, identity_words_p=0.7)
    adapter, graph, path = out["result"]
    assert path.startswith(str(tmp_path / "models")) and graph.shape[-1] == 3
    saved = IdentityAdapter.load(path)
    assert saved.info["hyper_parameters"]["identity_p"] == 0.7 and saved.info["steps"] == 2
    text = FaceSmithApplyIdentity().apply(bp, saved, "<identity>", 0.8, 0.0, 1.0, "average",
                                          faces=_faces(refs[:1]))["ui"]["text"][0]
    assert "connect Face Describe's identity_words" in text


def _faces(refs):
    from facesmith.core.identity import face_pipeline as fp

    return fp.analyze(refs, fp.FaceSettings(recognizer="none"))


def test_continuing_an_adapter_of_another_base_needs_rebase(world, tmp_path):
    """--init-from with an adapter trained on another base of the same shape (an earlier stage of this one) is
    refused, naming both bases, unless --rebase; then the weights carry over and the earlier base is recorded."""
    from dataclasses import replace

    from facesmith.core.identity.adapter import IdentityAdapter
    from facesmith.core.synthface.render import random_attributes, render
    from facesmith.trainers.identity_adapter import AdapterTrainSettings, build_face_pool, train_identity_adapter

    bp, adapter, _ = world
    rng = np.random.default_rng(2)
    ids = [1, 1, 2, 2]
    images = np.stack([render(i, random_attributes(rng), 64, view=k) for k, i in enumerate(ids)])
    pool = build_face_pool(bp, adapter.face_encoder, images, ids, [random_attributes(rng) for _ in ids])
    path = adapter.save(tmp_path / "a.safetensors")
    other = IdentityAdapter.load(path)
    other.base_fingerprint = "f" * 16
    other.save(tmp_path / "other-base.safetensors")
    settings = AdapterTrainSettings(steps=0, batch_size=2, n_refs=1,
                                    init_from=str(tmp_path / "other-base.safetensors"))
    with pytest.raises(ValueError, match=f"{'f' * 16}.*{adapter.base_fingerprint}.*--rebase"):
        train_identity_adapter(bp, adapter.face_encoder, pool, settings)
    moved, _ = train_identity_adapter(bp, adapter.face_encoder, pool, replace(settings, rebase=True))
    assert moved.info["continues"]["base_fingerprint"] == "f" * 16 and moved.info["hyper_parameters"]["rebase"]
    assert moved.base_fingerprint == adapter.base_fingerprint
    assert all(torch.equal(a, b) for a, b in zip(moved.net.state_dict().values(), adapter.net.state_dict().values()))
    with pytest.raises(ValueError, match="init_from"):
        AdapterTrainSettings(rebase=True).check()
