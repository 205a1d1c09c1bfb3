"""The instruction model (issue 16): instruction checks, the conditioner on the one Generate path (what it patches
and restores, the edit's framing), fused convolution LoRA = peft's, files and the training objective.

Runs on the built-in base with an UNTRAINED model (random face encoder); the shipped models' quality is measured by
``facesmith bench instruct``."""
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def world(facesmith):
    from facesmith.core.bench.base import load_builtin_base
    from facesmith.core.identity.face_encoder import ARCH, FaceEncoder
    from facesmith.core.instruct.model import new_model
    from facesmith.core.judges.nets import RecognizerNet
    from facesmith.core.synthface.edits import instruct_sample
    from facesmith.core.synthface.splits import identities

    torch.manual_seed(0)
    bp = load_builtin_base()
    fe = FaceEncoder(RecognizerNet(ARCH["dim"], tuple(ARCH["widths"]), tuple(ARCH["blocks"])), 0.5, {}, None)
    model = new_model(bp, fe, seed=1)
    with torch.no_grad():  # an untrained model starts nearly silent; give it a visible effect
        model.net.proj.weight.normal_(0, 0.05)
        model.source_weight.normal_(0, 0.1)
    rng = np.random.default_rng(0)
    sample = instruct_sample("subject_edit", rng, identities("train")[:50])
    return bp, model, sample


def test_instruction_checks_name_the_input():
    from facesmith.core.instruct.instruction import InstructionError, parse

    ins = parse("give <image1> the glasses of <image2>", [1, 2])
    assert ins.images == (1, 2) and ins.prompt == "give <fs-image1> the glasses of <fs-image2>"
    for text, connected, field in [("", [1], "instruction"), ("make <image1> smiling", [1, 2], "image2"),
                                   ("give <image1> the hat of <image3>", [1], "image3"),
                                   ("make it smile", [], "instruction"), ("see <image5>", [5], "instruction")]:
        with pytest.raises(InstructionError) as e:
            parse(text, connected)
        assert e.value.field == field, (text, e.value)


def _edit(bp, model, sample, source, **kw):
    from facesmith.core.instruct.instruction import parse
    from facesmith.core.instruct.model import instruct_images

    ins = parse(sample["instruction"], [1, 2])
    imgs = {1: sample["images"][0], 2: sample["images"][1]}
    return instruct_images(bp, model, ins, imgs, source=source, steps=3, seed=0, **kw)


def test_conditioner_patches_and_restores(world):
    from facesmith.core.generate import GenerateRequest, generate

    bp, model, sample = world
    unet = bp.pipe.unet
    conv, tok, emb = unet.conv_in, bp.pipe.tokenizer, bp.pipe.text_encoder.get_input_embeddings()
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    req = GenerateRequest(prompt="a photo of a person", seed=0, steps=3, cfg=3.0, scheduler="dpmpp_2m")
    before = generate(bp, req)
    edit = _edit(bp, model, sample, sample["source"])
    gen = _edit(bp, model, sample, None)
    assert edit.shape == gen.shape == (1, 64, 64, 3) and (edit - gen).abs().max() > 1e-3  # the source matters
    assert unet.conv_in is conv and bp.pipe.tokenizer is tok
    assert bp.pipe.text_encoder.get_input_embeddings() is emb
    assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())
    assert not hasattr(unet, "_facesmith_channel_conditioning")
    assert torch.equal(generate(bp, req), before)


def test_edit_keeps_the_source_framing(world):
    """A non-square source: the result has the source's own size (resized back, never cropped)."""
    bp, model, sample = world
    wide = np.concatenate([sample["source"], sample["source"][:, :32]], 1)  # 64 x 96
    out = _edit(bp, model, sample, wide)
    assert out.shape == (1, 64, 96, 3)


def test_fused_conv_lora_equals_peft(world):
    """The inference path fuses conv LoRA offsets into the kernels; peft computes them on the fly: same output."""
    from facesmith.core.concept.lora import FusedLora, trainable_lora
    from facesmith.core.instruct.model import lora_targets

    bp, model, _ = world
    unet = bp.pipe.unet
    targets = lora_targets(unet)
    assert any(t.endswith("conv1") for t in targets) and any(t.endswith("to_q") for t in targets)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([400])
    ehs = torch.randn(1, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        with trainable_lora(unet, 4, 8.0, targets=targets) as mods:
            for d, u in zip(mods.down, mods.up):
                u.weight.normal_(0, 0.05)
            lora = mods.weights()
            want = unet(x, t, encoder_hidden_states=ehs).sample
        with FusedLora(lora, 8.0 / 4).applied(unet):
            got = unet(x, t, encoder_hidden_states=ehs).sample
    assert torch.allclose(got, want, atol=1e-4)


def test_model_file_round_trip_and_base_check(world, tmp_path):
    from facesmith.core.concept.concept import BaseMismatch
    from facesmith.core.instruct.model import InstructModel

    bp, model, sample = world
    path = model.save(tmp_path / "m.safetensors")
    back = InstructModel.load(path)
    assert back.model_id == model.model_id
    assert torch.allclose(back.vectors(bp, sample["images"][:1]), model.vectors(bp, sample["images"][:1]), atol=1e-5)
    back.base_fingerprint = "0" * 16
    with pytest.raises(BaseMismatch, match="0000000000000000"):
        back.check_base(bp)


def test_training_objective_learns_and_drops_conditions(world):
    """A few steps on a small pool lower the loss; the batches drop instruction / source as documented."""
    from facesmith.trainers.instruct import InstructTrainSettings, build_pool, render_samples, train_instruct

    bp, model, _ = world
    images, samples = render_samples(6, seed=0, size=64)
    pool = build_pool(bp, model.face_encoder, images, samples, grid=model.cfg.grid)
    assert len(pool) == 18 and set(pool.task.tolist()) == {0, 1, 2}
    assert (pool.source[pool.task == 0] == -1).all() and (pool.source[pool.task > 0] >= 0).all()
    settings = InstructTrainSettings(steps=30, batch_size=8, learning_rate=3e-3, warmup_steps=0, lora_rank=2,
                                     drop_p=0.3, lr_schedule="constant", log_every=1000)
    trained, result = train_instruct(bp, model.face_encoder, pool, settings)
    h = result.loss_history
    assert np.mean(h[-8:]) < np.mean(h[:8])
    assert trained.lora and trained.source_weight.abs().max() > 0  # both parts trained
    assert not hasattr(bp.pipe.unet, "peft_config")  # the base is plain again


def test_training_continues_an_earlier_model_and_renders_the_pool_in_parallel(world, tmp_path):
    """--init-from starts from the earlier file's weights (0 more steps give them back); a pool's images are the
    same rendered in one process or several."""
    import torch

    from dataclasses import replace

    from facesmith.core.instruct.model import InstructModel
    from facesmith.trainers.instruct import InstructTrainSettings, build_pool, render_samples, train_instruct

    bp, model, _ = world
    one, s1 = render_samples(52, seed=3, size=64, tasks=("subject_edit", "instruction_edit"), workers=1)
    two, s2 = render_samples(52, seed=3, size=64, tasks=("subject_edit", "instruction_edit"), workers=2)
    assert len(one) >= 256 and np.array_equal(one, two) and s1 == s2  # 256+ jobs: really two processes
    pool = build_pool(bp, model.face_encoder, one[:40], [s for s in s1 if max(s["images"] + [s["target"]]) < 40],
                      grid=model.cfg.grid)
    settings = InstructTrainSettings(steps=3, batch_size=4, lora_rank=2, warmup_steps=0, log_every=1000)
    first, _ = train_instruct(bp, model.face_encoder, pool, settings)
    first.save(tmp_path / "first.safetensors")
    again, _ = train_instruct(bp, model.face_encoder, pool,
                              InstructTrainSettings(steps=0, batch_size=4, lora_rank=2,
                                                    init_from=str(tmp_path / "first.safetensors")))
    assert again.info["continues"]["steps"] == 3 and "continues" not in again.info["continues"]
    again.save(tmp_path / "again.safetensors")
    third, _ = train_instruct(bp, model.face_encoder, pool,
                              InstructTrainSettings(steps=0, batch_size=4, lora_rank=2,
                                                    init_from=str(tmp_path / "again.safetensors")))
    assert third.info["continues"]["continues"] == again.info["continues"]  # every stage of the file's making
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), first.net.state_dict().values()))
    assert torch.equal(again.source_weight, first.source_weight)
    assert all(torch.equal(again.lora[p][0], first.lora[p][0]) and torch.equal(again.lora[p][1], first.lora[p][1])
               for p in first.lora)
    with pytest.raises(ValueError, match="configuration"):  # another shape is refused, naming both
        train_instruct(bp, model.face_encoder, pool, InstructTrainSettings(
            steps=0, batch_size=4, lora_rank=4, init_from=str(tmp_path / "first.safetensors")))
    # a model of another base (an earlier stage of this one) continues only with rebase, which records that base
    other = InstructModel.load(tmp_path / "first.safetensors")
    other.base_fingerprint = "0" * 16
    other.save(tmp_path / "other-base.safetensors")
    moved = InstructTrainSettings(steps=0, batch_size=4, lora_rank=2,
                                  init_from=str(tmp_path / "other-base.safetensors"))
    with pytest.raises(ValueError, match="0000000000000000.*--rebase"):
        train_instruct(bp, model.face_encoder, pool, moved)
    rebased, _ = train_instruct(bp, model.face_encoder, pool, replace(moved, rebase=True))
    assert rebased.info["continues"]["base_fingerprint"] == "0" * 16
    assert rebased.base_fingerprint == first.base_fingerprint  # the result belongs to this run's base
    assert torch.equal(rebased.source_weight, first.source_weight)
    with pytest.raises(ValueError, match="init_from"):
        InstructTrainSettings(rebase=True).check()


def test_identity_loss_compares_the_decoded_estimate_with_the_target_face(world):
    """``--id-weight``: the face encoder's view of the decoded clean estimate against the target render's face,
    on conditioned rows with small timesteps only; it reaches the fusion network; off by default."""
    from facesmith.core.concept.diffusion import ParamHolder, frozen
    from facesmith.core.concept.lora import trainable_lora
    from facesmith.trainers.instruct import InstructObjective, build_pool, lora_targets, render_samples

    bp, model, _ = world
    images, samples = render_samples(4, seed=1, size=64)
    pool = build_pool(bp, model.face_encoder, images, samples, grid=model.cfg.grid)
    dp = bp.pipe
    with frozen(dp.unet, dp.text_encoder, dp.vae, model.face_encoder.net), \
            trainable_lora(dp.unet, 2, 2.0, targets=lora_targets(dp.unet)) as mods:
        def objective(w, t_max=1000):
            return InstructObjective(dp, model, pool, mods, ParamHolder(model.source_weight), batch_size=6,
                                     drop_p=0.0, id_weight=w, id_t_max=t_max)

        off = objective(0.0)
        loss0, logs0 = off.loss(off.make_batch(0), 0)
        assert "id" not in logs0
        on = objective(1.0)
        loss1, logs1 = on.loss(on.make_batch(0), 0)  # same batch and noise: the loss adds the identity term
        assert 0.0 < logs1["id"] <= 2.0 and float(loss1) == pytest.approx(float(loss0) + logs1["id"], rel=1e-4)
        model.net.zero_grad()
        loss1.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.parameters())
        never = objective(1.0, t_max=0)  # no timestep is below 0: no row qualifies
        assert "id" not in never.loss(never.make_batch(0), 0)[1]


def test_identity_words_join_subject_generation_instructions_only(world):
    """``--identity-p``: a subject generation instruction names its person's visible traits after <image1> (each
    with probability identity_p); edits keep their instructions; a pool without persons is refused."""
    import dataclasses

    from facesmith.core.concept.diffusion import ParamHolder
    from facesmith.core.synthface.captions import describe_identity
    from facesmith.core.synthface.render import identity_traits
    from facesmith.trainers.identity_adapter import VISIBLE_TRAITS
    from facesmith.trainers.instruct import InstructObjective, build_pool, render_samples

    bp, model, _ = world
    images, samples = render_samples(3, seed=2, size=64)
    pool = build_pool(bp, model.face_encoder, images, samples, grid=model.cfg.grid)
    assert [int(p) for p in pool.person] == [s["person"] for s in samples]

    def objective(p, pool=pool):
        return InstructObjective(bp.pipe, model, pool, None, ParamHolder(model.source_weight), identity_p=p)

    always, never = objective(1.0), objective(0.0)
    rng = np.random.default_rng(0)
    for row in range(len(pool)):
        if pool.task[row] == 0:  # subject generation: every visible trait, right after image1's tokens
            words = describe_identity(identity_traits(int(pool.person[row])).facts(), VISIBLE_TRAITS)
            assert always._prompt(row, rng) == never._prompt(row, rng).replace(
                never._prompt(row, rng).split(",")[0], never._prompt(row, rng).split(",")[0] + ", " + words, 1)
        else:
            assert always._prompt(row, rng) == never._prompt(row, rng)
    with pytest.raises(ValueError, match="build the pool again"):
        objective(0.5, dataclasses.replace(pool, person=None))


def test_an_identity_with_an_edit_conditions_the_text_branch_only_whatever_the_batch(world):
    """An edit runs three UNet branches (no source no text, source only, source and text). An identity applied with
    it (Instruct Generate/Edit's ``concepts``) is text-side conditioning: its attention joins the source-and-text
    branch only, as its token does, so image i of a batch is the same image at any batch size."""
    from facesmith.core.identity import face_pipeline as fp
    from facesmith.core.identity.adapter import IdentityAdapter, IdentityConditioner
    from facesmith.core.paths import BUILTIN_MODELS_DIR

    bp, model, sample = world
    adapter = IdentityAdapter.load(BUILTIN_MODELS_DIR / "facesmith" / "identity" / "synthface-idadapter.safetensors")
    faces = fp.analyze(sample["images"][0][None], fp.FaceSettings(recognizer="none"))
    idc = IdentityConditioner(adapter, adapter.identity(bp, faces.crops), weight=0.8)
    one = _edit(bp, model, sample, sample["source"], conditioners=[idc])
    two = _edit(bp, model, sample, sample["source"], conditioners=[idc], batch_size=2)
    plain = _edit(bp, model, sample, sample["source"])
    assert (one - plain).abs().max() > 1e-2  # the identity takes part in the edit
    assert torch.allclose(two[:1], one, atol=1e-4), (two[:1] - one).abs().max()


def test_pool_seed_keeps_the_pool_while_seed_draws_new_batches(facesmith, tmp_path):
    """``facesmith train instruct --pool-seed``: the pool (and the cache it is kept in) belongs to the pool seed, so
    a continuation with another ``--seed`` reuses its pool; a command whose pool seed differs is refused the cache."""
    from facesmith.core import cli
    from facesmith.trainers.instruct import load_pool

    cache = tmp_path / "pool.safetensors"
    argv = ["train", "instruct", "--per-task", "3", "--tasks", "instruction_edit", "--batch-size", "2", "--steps", "1",
            "--workers", "1", "--threads", "1", "--lora-rank", "2", "--pool-cache", str(cache)]
    assert cli.main(argv + ["--seed", "1", "--pool-seed", "0", "--out", str(tmp_path / "a.safetensors"),
                            "--work-dir", str(tmp_path / "wa")]) == 0
    assert " seed=0 " in load_pool(cache).source_name
    assert cli.main(argv + ["--seed", "2", "--pool-seed", "0", "--out", str(tmp_path / "b.safetensors"),
                            "--work-dir", str(tmp_path / "wb")]) == 0
    with pytest.raises(SystemExit, match="holds another pool"):  # --pool-seed defaults to --seed: seed=1's pool
        cli.main(argv + ["--seed", "1", "--out", str(tmp_path / "c.safetensors"), "--work-dir", str(tmp_path / "wc")])


def test_training_with_the_identity_adapter_matches_apply_identity(world):
    """``--identity-adapter``: subject generation rows get image1's identity as Apply Identity gives it at use (the
    adapter's offsets at the weight on its class word, right after <image1>'s words, and its decoupled attention),
    edits and rows without the instruction do not; the LoRA learns through it; a pool without patch tokens is
    refused."""
    import dataclasses

    from facesmith.core.concept.diffusion import ParamHolder, frozen
    from facesmith.core.concept.lora import trainable_lora
    from facesmith.core.concept.tokens import vector_tokens
    from facesmith.core.identity.adapter import IdentityAdapter, synthface_crops
    from facesmith.core.instruct.instruction import image_token
    from facesmith.core.paths import BUILTIN_MODELS_DIR
    from facesmith.trainers.instruct import (ADAPTER_TOKEN, IdentityJoin, InstructObjective, build_pool,
                                             lora_targets, render_samples)

    bp, model, _ = world
    dp = bp.pipe
    adapter = IdentityAdapter.load(BUILTIN_MODELS_DIR / "facesmith" / "identity" / "synthface-idadapter.safetensors")
    images, samples = render_samples(3, seed=3, size=64)
    fe = adapter.face_encoder  # the pool's faces are embedded by the adapter's face encoder, as in real training
    pool = build_pool(bp, fe, images, samples, grid=model.cfg.grid, patch_pool=4)
    assert pool.patches.shape == (len(images), 16, adapter.cfg.patch_dim)
    with pytest.raises(ValueError, match="build the pool again"):
        IdentityJoin(adapter, dataclasses.replace(pool, patches=None), 0.5, fe)
    with pytest.raises(ValueError, match="face encoder"):
        IdentityJoin(adapter, pool, 0.5, model.face_encoder)  # the fixture's untrained one
    join = IdentityJoin(adapter, pool, 0.5, fe)

    sg = int(np.flatnonzero(pool.task == 0)[0])  # image1's identity, as the adapter makes it at use
    first = int(pool.images[sg, 0])
    x = torch.from_numpy(images[first:first + 1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    want = adapter.identity_from_features(*adapter.features(bp, synthface_crops(x)))
    vec, ctx = join.condition(pool, np.array([sg]), "cpu")
    assert torch.allclose(vec[0], adapter.class_embedding + 0.5 * want.offsets, atol=1e-4)
    assert torch.allclose(ctx[0], want.ctx, atol=1e-4)

    with frozen(dp.unet, dp.text_encoder, dp.vae, model.face_encoder.net, adapter.net), \
            trainable_lora(dp.unet, 2, 2.0, targets=lora_targets(dp.unet)) as mods:
        def objective(identity=None, drop_p=0.0):
            return InstructObjective(dp, model, pool, mods, ParamHolder(model.source_weight), batch_size=9,
                                     drop_p=drop_p, identity=identity)

        plain, joined = objective(), objective(join)
        words, image1 = " ".join(join.words), " ".join(vector_tokens(image_token(1), model.cfg.n_tokens))
        assert image1 in plain.prompts[sg]
        for row in range(len(pool)):
            if pool.task[row] == 0:  # subject generation: the identity's words right after image1's
                assert joined.prompts[row] == plain.prompts[row].replace(image1, f"{image1}, {words}", 1)
            else:
                assert joined.prompts[row] == plain.prompts[row] and ADAPTER_TOKEN not in joined.prompts[row]
        batch = plain.make_batch(0)
        loss0, _ = plain.loss(batch, 0)
        loss1, _ = joined.loss(batch, 0)
        assert abs(float(loss1) - float(loss0)) > 1e-6  # the adapter takes part in the same batch and noise
        mods.zero_grad()
        loss1.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mods.parameters())
        assert all(p.grad is None for p in adapter.net.parameters())  # the adapter stays frozen
        # subject generation rows without their instruction, edit rows with theirs: the adapter touches neither
        from facesmith.core.concept.diffusion import caption_ids

        is_sg = torch.from_numpy(pool.task[batch["rows"].numpy()] == 0)
        assert bool(is_sg.any()) and not bool(is_sg.all())
        caps = ["" if g else plain.prompts[r] for r, g in zip(batch["rows"].tolist(), is_sg.tolist())]
        dropped = dict(batch, drop_text=batch["drop_text"] | is_sg, ids=caption_ids(plain.tok, caps))
        assert float(joined.loss(dropped, 0)[0]) == pytest.approx(float(plain.loss(dropped, 0)[0]), abs=1e-6)


def test_a_model_trained_with_an_identity_asks_for_it_in_subject_generation(world):
    """A model trained with ``--identity-adapter`` warns when a subject generation runs without that adapter's
    identity (it keeps much less of the person alone); not for an edit, nor with the identity applied, nor for a
    model trained without one."""
    import dataclasses
    from types import SimpleNamespace

    from facesmith.core.instruct.model import identity_missing

    _, model, _ = world
    assert identity_missing(model) is None
    made_with = {"adapter_id": "a8fe", "weight": 0.5}
    trained = dataclasses.replace(model, info=dict(model.info, trained_with_identity=made_with))
    text = identity_missing(trained)
    assert "a8fe" in text and "Apply Identity" in text
    assert identity_missing(trained, source=np.zeros((8, 8, 3), np.uint8)) is None
    assert identity_missing(trained, [SimpleNamespace(adapter=SimpleNamespace(adapter_id="a8fe"))]) is None
    assert identity_missing(trained, [SimpleNamespace(adapter=SimpleNamespace(adapter_id="other"))]) is not None
