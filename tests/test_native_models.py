"""Native ComfyUI MODEL / CLIP / VAE from FaceSmith's diffusers folders (issue 18, item 1).

Without ComfyUI: the configuration ComfyUI's classes get is computed from the folder's config files
(``core/native_config.py``) for SD1.5- and SDXL-shaped folders, and other shapes are refused with a reason. With
ComfyUI importable from ``FACESMITH_COMFYUI_DIR`` (a ComfyUI checkout whose requirements are installed in the running
Python), the loader builds ComfyUI's own UNet, CLIP and VAE and each computes what the diffusers model computes on
the same input; otherwise those tests are skipped with that reason.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)

from facesmith.core.native_config import UnsupportedShape, native_config, unet_config_from_diffusers

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "assets" / "models" / "diffusers" / "synthface-base"
ENV_DIR = "FACESMITH_COMFYUI_DIR"


def test_builtin_base_config_for_comfyui():
    cfg = native_config(BASE)
    u = cfg.unet_config
    assert (u["model_channels"], u["channel_mult"], u["num_res_blocks"]) == (32, [1, 2, 4], [1, 1, 1])
    assert u["transformer_depth"] == [0, 1, 1] and u["transformer_depth_output"] == [0, 0, 1, 1, 1, 1]
    assert (u["context_dim"], u["num_heads"], u["transformer_depth_middle"]) == (128, 4, 1)
    assert cfg.unet_groups == 16 and cfg.vae_groups == 8 and cfg.vae_downscale == 4
    assert cfg.vae_ddconfig["ch"] == 32 and cfg.vae_ddconfig["ch_mult"] == [1, 2, 2]
    assert cfg.clip_config["hidden_size"] == 128 and cfg.clip_config["num_hidden_layers"] == 3
    assert cfg.prediction == "v_prediction" and abs(cfg.latent_scale - 0.9108848276784675) < 1e-12


def test_sdxl_shaped_folder_of_any_size_config_for_comfyui(tmp_path):
    """A small SDXL-shaped folder: per-block transformer depths, linear projections, two text encoders whose widths
    add up to the cross-attention width, and the pooled vector + 6 size/crop embeddings of the added input."""
    folder = tiny_models.save_tiny_sdxl(tmp_path / "xl")
    cfg = native_config(folder)
    u = cfg.unet_config
    assert cfg.family == "sdxl" and cfg.label == "SDXL"
    assert (u["num_classes"], u["adm_in_channels"], cfg.adm_time_dim) == ("sequential", 32 + 6 * 8, 8)
    assert u["transformer_depth"] == [0, 2] and u["transformer_depth_output"] == [0, 0, 2, 2]
    assert (u["transformer_depth_middle"], u["use_linear_in_transformer"], u["context_dim"]) == (2, True, 80)
    assert (cfg.clip_config["hidden_size"], cfg.clip_g_config["hidden_size"], cfg.clip_g_config["projection_dim"]) \
        == (32, 48, 32)


def test_other_shapes_are_refused_with_a_reason(tmp_path):
    unet = json.loads((BASE / "unet" / "config.json").read_text())
    with pytest.raises(UnsupportedShape, match="addition_embed_type 'image'"):
        unet_config_from_diffusers({**unet, "addition_embed_type": "image"})
    with pytest.raises(UnsupportedShape, match="class_embed_type"):
        unet_config_from_diffusers({**unet, "class_embed_type": "timestep"})
    with pytest.raises(UnsupportedShape, match="neither one count nor one width"):
        unet_config_from_diffusers({**unet, "attention_head_dim": [1, 2, 8]})
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    with pytest.raises(UnsupportedShape, match="use ComfyUI's own loaders"):
        native_config(tmp_path)
    xl = tiny_models.save_tiny_sdxl(tmp_path / "xl")
    te2 = json.loads((xl / "text_encoder_2" / "config.json").read_text())
    (xl / "text_encoder_2" / "config.json").write_text(json.dumps({**te2, "hidden_size": 64}))
    with pytest.raises(UnsupportedShape, match=r"widths 32 \+ 64 are not the UNet's cross-attention width 80"):
        native_config(xl)


@pytest.fixture(scope="module")
def comfy_native():
    where = os.environ.get(ENV_DIR, "").strip()
    if not where:
        pytest.skip(f"{ENV_DIR} not set: the native-model tests against ComfyUI's classes are skipped")
    if where not in sys.path:
        sys.path.insert(0, where)
    try:
        import comfy.cli_args  # type: ignore

        comfy.cli_args.args.cpu = True  # before model_management picks a device
        from facesmith.nodes.native_models import load_native
    except ImportError as exc:
        pytest.skip(f"ComfyUI at {where} does not import in this Python ({exc})")
    return load_native(BASE, embedding_directory=[])


def test_comfyui_classes_compute_what_the_diffusers_model_computes(comfy_native):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model, clip, vae = comfy_native
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([500.0, 20.0]), torch.randn(2, 77, 128,
                                                                                                     generator=g)
    unet = UNet2DConditionModel.from_pretrained(BASE / "unet").float().eval()
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample
        out = model.model.diffusion_model.float()(x, timesteps=t, context=ctx)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    dvae = AutoencoderKL.from_pretrained(BASE / "vae").float().eval()
    z = torch.randn(1, 4, 16, 16, generator=g)
    with torch.no_grad():
        ref = dvae.decode(z).sample
        out = vae.first_stage_model.float().decode(z)
    assert out.shape == (1, 3, 64, 64) and torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    te = CLIPTextModel.from_pretrained(BASE / "text_encoder").float().eval()
    prompt = "a photo of a person, with red hair, smiling"
    ids = CLIPTokenizer.from_pretrained(BASE / "tokenizer")(prompt, padding="max_length", max_length=77,
                                                              return_tensors="pt").input_ids
    with torch.no_grad():
        ref = te(ids)[0]
    tokens = clip.tokenize(prompt)
    assert [tok for tok, _ in tokens["l"][0]] == ids[0].tolist()
    cond = clip.encode_from_tokens(tokens).float()
    assert torch.allclose(cond, ref, atol=1e-4), (cond - ref).abs().max()
    assert model.model.latent_format.scale_factor == pytest.approx(0.9108848276784675)
    assert vae.downscale_ratio == 4 and model.model.model_type.name == "V_PREDICTION"


def _concept_on_builtin_base(pipeline, n_vectors=2, rank=4, seed=0):
    """A concept with random vectors and a random LoRA on every E4T target layer of the built-in base."""
    from facesmith.core.concept.concept import Concept
    from facesmith.core.concept.lora import target_module_paths

    g = torch.Generator().manual_seed(seed)
    unet = pipeline.pipe.unet
    lora = {}
    for p in target_module_paths(unet):
        w = unet.get_submodule(p).weight
        lora[p] = (torch.randn(rank, w.shape[1], generator=g) * 0.1, torch.randn(w.shape[0], rank, generator=g) * 0.1)
    return Concept(token="<fs-native>", embedding=torch.randn(n_vectors, 128, generator=g) * 0.5,
                   base_name=pipeline.name, base_fingerprint=pipeline.fingerprint, lora=lora, lora_rank=rank,
                   lora_alpha=2.0, lora_scale=0.7)


def test_apply_concept_patches_what_generate_applies(comfy_native):
    """Apply Concept (FaceSmith) on ComfyUI's model gives the UNet weights and prompt conditioning that the
    diffusers Generate path has while the same concept is applied (one maths module: core/concept/inference.py);
    weight 0.5 patches half the offsets; the unpatched model and CLIP are left as they were."""
    import comfy.utils  # type: ignore

    from facesmith.core.models import load_pipeline
    from facesmith.nodes.native_concept import FaceSmithApplyConcept

    model, clip, _ = comfy_native
    pipeline = load_pipeline(BASE, device="cpu", dtype=torch.float32)
    concept = _concept_on_builtin_base(pipeline)
    node = FaceSmithApplyConcept()
    patched_model, patched_clip = node.apply(model, clip, [concept], 1.0)
    assert patched_model is not model and patched_clip is not clip
    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    dp = pipeline.pipe
    base_weights = {p: dp.unet.get_submodule(p).weight.detach().clone() for p in concept.lora}
    prompt = "a photo of <fs-native>, smiling, on a blue background"
    with concept.applied(pipeline):
        fused = {p: dp.unet.get_submodule(p).weight.detach().clone() for p in concept.lora}
        ids = dp.tokenizer(concept.rewrite_prompt(prompt), padding="max_length", max_length=77,
                           return_tensors="pt").input_ids
        with torch.no_grad():
            want_cond = dp.text_encoder(ids)[0]
    for weight in (1.0, 0.5):
        pm, _ = node.apply(model, clip, [concept], weight)
        pm.patch_model()
        try:
            sd = pm.model.diffusion_model.state_dict()
            for p in concept.lora:
                got = sd[mapping[f"{p}.weight"]].float()
                want = base_weights[p] + weight * (fused[p] - base_weights[p])
                assert torch.allclose(got, want, atol=1e-5), (p, weight, (got - want).abs().max())
        finally:
            pm.unpatch_model()
    sd = model.model.diffusion_model.state_dict()
    p0 = next(iter(concept.lora))
    assert torch.equal(sd[mapping[f"{p0}.weight"]].float(), base_weights[p0])  # the input model is untouched
    cond = patched_clip.encode_from_tokens(patched_clip.tokenize(prompt)).float()
    assert torch.allclose(cond, want_cond, atol=1e-4), (cond - want_cond).abs().max()
    plain = clip.encode_from_tokens(clip.tokenize(prompt)).float()
    assert (plain - want_cond).abs().max() > 1e-2  # the input CLIP still reads the token as plain text
    assert node.apply(model, clip, [concept], 0.0) == (model, clip)


def test_apply_concept_refuses_a_concept_of_another_base(comfy_native):
    """ComfyUI only logs "WEIGHT NOT MERGED" for a patch of the wrong shape; the node names the problem instead."""
    from facesmith.core.concept.concept import Concept
    from facesmith.core.concept.lora import target_module_paths
    from facesmith.core.models import load_pipeline
    from facesmith.nodes.native_concept import FaceSmithApplyConcept

    model, clip, _ = comfy_native
    pipeline = load_pipeline(BASE, device="cpu", dtype=torch.float32)
    path = target_module_paths(pipeline.pipe.unet)[0]
    other = Concept(token="<fs-other>", embedding=torch.zeros(1, 128), base_name="x", base_fingerprint="unknown",
                    lora={path: (torch.zeros(2, 7), torch.zeros(9, 2))}, lora_rank=2, lora_alpha=2.0)
    with pytest.raises(ValueError, match="Apply Concept \\(FaceSmith\\): input 'concepts'.*made for another base"):
        FaceSmithApplyConcept().apply(model, clip, [other], 1.0)


def test_apply_identity_to_model_computes_what_generate_computes(comfy_native):
    """The identity adapter's attn2 replace patches on ComfyUI's UNet give the output of the diffusers UNet with the
    same identity attached (one maths module: core/identity/adapter_net.py), on the conditional rows only; the
    unconditional rows and weight 0 give the plain model's output."""
    import numpy as np

    from facesmith.core.identity import face_pipeline as fp
    from facesmith.core.identity.adapter import AttentionEntry, IdentityAdapter, attached
    from facesmith.core.models import load_pipeline
    from facesmith.core.synthface.render import random_attributes, render
    from facesmith.nodes.native_identity import FaceSmithApplyIdentityToModel

    model, clip, vae = comfy_native
    adapter = IdentityAdapter.load(ROOT / "assets" / "models" / "facesmith" / "identity" /
                                   "synthface-idadapter.safetensors")
    pipeline = load_pipeline(BASE, device="cpu", dtype=torch.float32)
    refs = np.stack([render(18, random_attributes(np.random.default_rng(0)), 64, view=v) for v in (3, 5)])
    faces = fp.analyze(refs, fp.FaceSettings(recognizer="none"))
    identity = adapter.identity(pipeline, faces.crops[:1])
    node = FaceSmithApplyIdentityToModel()
    patched, patched_clip = node.apply(model, clip, adapter, "<identity>", 0.8, 0.0, 1.0, identity=identity)
    assert node.apply(model, clip, adapter, "<identity>", 0.0, 0.0, 1.0, identity=identity) == (model, clip)
    # made from faces through ComfyUI's VAE: the identity the diffusers pipeline makes (no second model copy)
    from facesmith.nodes import native_identity

    for combine in ("average", "concat"):
        native_id = native_identity.identity_from_faces("n", model, vae, adapter, faces, combine)
        want = adapter.identity(pipeline, faces.crops, combine)
        assert native_id.n_references == 2
        assert torch.allclose(native_id.ctx, want.ctx, atol=1e-4), (native_id.ctx - want.ctx).abs().max()
        assert torch.allclose(native_id.offsets, want.offsets, atol=1e-4)
    with pytest.raises(ValueError, match="input 'vae'"):
        node.apply(model, clip, adapter, "<identity>", 0.8, 0.0, 1.0, faces=faces)
    with pytest.raises(ValueError, match="input 'identity'"):
        node.apply(model, clip, adapter, "<identity>", 0.8, 0.0, 1.0)
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 128, generator=g)
    t = torch.tensor([400.0, 400.0])
    sigma = patched.get_model_object("model_sampling").sigma(t[:1])
    opts = dict(patched.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=sigma)
    with torch.no_grad():
        native = model.model.diffusion_model.float()(x, timesteps=t, context=ctx, transformer_options=opts)
        plain = model.model.diffusion_model.float()(x, timesteps=t, context=ctx, transformer_options={})
        unet = pipeline.pipe.unet
        entry = AttentionEntry(net=adapter.net, ctx=identity.ctx[None], scale=0.8,
                               rows=torch.tensor([False, True]))
        with attached(unet, entry):
            want = unet(x, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(native[:1], plain[:1], atol=1e-5)  # the unconditional row is untouched
    assert (native[1:] - plain[1:]).abs().max() > 1e-3
    assert torch.allclose(native, want, atol=1e-4), (native - want).abs().max()
    # the token reads the identity's vectors in the patched CLIP
    prompt = "a photo of <identity>, smiling"
    cond = patched_clip.encode_from_tokens(patched_clip.tokenize(prompt)).float()
    plain_cond = clip.encode_from_tokens(clip.tokenize(prompt)).float()
    assert (cond - plain_cond).abs().max() > 1e-2
    # words (Face Describe's identity_words): ComfyUI's CLIP gives the vectors the diffusers text encoder gives, and
    # the token reads '<identity>, words'
    words = "dark skin, round face"
    _, worded_clip = node.apply(model, clip, adapter, "<identity>", 0.8, 0.0, 1.0, identity=identity, words=words)
    assert torch.allclose(native_identity.clip_word_vectors(clip, words),
                          identity.described(pipeline, words).word_vectors, atol=1e-6)
    worded = worded_clip.encode_from_tokens(worded_clip.tokenize(prompt)).float()
    written = patched_clip.encode_from_tokens(patched_clip.tokenize(f"a photo of <identity>, {words}, smiling"))
    assert torch.allclose(worded, written.float(), atol=1e-4), (worded - written.float()).abs().max()


def _random_instruct_model(pipeline):
    """An instruction model for the built-in base with random fusion output, source channels and LoRA."""
    from facesmith.core.concept.lora import trainable_lora
    from facesmith.core.identity.face_encoder import ARCH, FaceEncoder
    from facesmith.core.instruct.model import lora_targets, new_model
    from facesmith.core.judges.nets import RecognizerNet

    torch.manual_seed(0)
    fe = FaceEncoder(RecognizerNet(ARCH["dim"], tuple(ARCH["widths"]), tuple(ARCH["blocks"])), 0.5, {}, None)
    im = new_model(pipeline, fe, seed=2, lora_rank=2, lora_alpha=4.0)
    unet = pipeline.pipe.unet
    with torch.no_grad():
        im.net.proj.weight.normal_(0, 0.05)
        im.source_weight.normal_(0, 0.1)
        with trainable_lora(unet, 2, 4.0, targets=lora_targets(unet)) as mods:
            for u in mods.up:
                u.weight.normal_(0, 0.05)
            im.lora = mods.weights()
    return im


def test_apply_instruction_to_model_computes_what_generate_computes(comfy_native):
    """Apply Instruction to Model on ComfyUI's objects equals the diffusers InstructionConditioner: the image
    vectors (ComfyUI's VAE encoder feeding the same fusion network), the instruction's text conditioning, and the
    UNet with the LoRA patches and the source as extra input channels."""
    import numpy as np

    from facesmith.core.concept.lora import FusedLora
    from facesmith.core.image_conditioning import extra_input_channels
    from facesmith.core.instruct.instruction import parse
    from facesmith.core.instruct.model import InstructionConditioner
    from facesmith.core.models import load_pipeline
    from facesmith.core.synthface.edits import instruct_sample
    from facesmith.core.synthface.splits import identities
    from facesmith.nodes.instruct_nodes import MultimodalInstruction
    from facesmith.nodes.native_instruct import FaceSmithApplyInstructionToModel

    model, clip, vae = comfy_native
    pipeline = load_pipeline(BASE, device="cpu", dtype=torch.float32)
    im = _random_instruct_model(pipeline)
    unet = pipeline.pipe.unet
    s = instruct_sample("subject_edit", np.random.default_rng(4), identities("train")[:50])
    images = {n + 1: torch.from_numpy(x[None]).float() / 255 for n, x in enumerate(s["images"])}
    ins = parse(s["instruction"], [1, 2])
    cond = InstructionConditioner(im, ins, images, pipeline, source=images[1], image_guidance=1.5, weight=0.7)
    patched, positive, image_negative, negative, latent = FaceSmithApplyInstructionToModel().apply(
        model, clip, vae, im, MultimodalInstruction(ins, images), "image1", 0.7)
    src = positive[0][1]["noise_concat"]
    assert torch.allclose(src, cond.source, atol=1e-4)  # ComfyUI's VAE + latent format = Generate's latents
    assert torch.equal(image_negative[0][1]["noise_concat"], src)
    assert not negative[0][1]["noise_concat"].any() and tuple(latent["samples"].shape) == tuple(src.shape)
    # the instruction's conditioning: ComfyUI's CLIP with the image vectors = diffusers' text encoder with them
    dp = pipeline.pipe
    with cond.applied(pipeline):
        ids = dp.tokenizer(cond.rewrite_prompt(ins.prompt), padding="max_length", max_length=77,
                           truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            want_text = dp.text_encoder(ids)[0]
    assert torch.allclose(positive[0][0].float(), want_text, atol=1e-4), (positive[0][0] - want_text).abs().max()
    # the UNet: LoRA weight patches + extra channels on ComfyUI's model = fused LoRA + extra channels in diffusers
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 128, generator=g)
    t = torch.tensor([300.0])
    with torch.no_grad():
        patched.patch_model()
        try:
            native = patched.model.diffusion_model.float()(torch.cat([x, src], 1), timesteps=t, context=ctx)
        finally:
            patched.unpatch_model()
        with FusedLora(im.lora, im.cfg.lora_alpha / im.cfg.lora_rank * 0.7).applied(unet), \
                extra_input_channels(unet, im.source_weight * 0.7):
            want = unet(torch.cat([x, cond.source], 1), t, encoder_hidden_states=ctx).sample
    assert torch.allclose(native, want, atol=1e-4), (native - want).abs().max()


def _shipped_adapter_identity(pipeline):
    """(the shipped identity adapter, one SynthFace reference render (H, W, 3) uint8, its identity)."""
    import numpy as np

    from facesmith.core.identity import face_pipeline as fp
    from facesmith.core.identity.adapter import IdentityAdapter
    from facesmith.core.synthface.render import random_attributes, render

    adapter = IdentityAdapter.load(ROOT / "assets" / "models" / "facesmith" / "identity" /
                                   "synthface-idadapter.safetensors")
    ref = render(18, random_attributes(np.random.default_rng(0)), 64, view=3)
    return adapter, ref, adapter.identity(pipeline, fp.analyze(ref[None], fp.FaceSettings(recognizer="none")).crops)


def test_identity_then_instruction_on_model_computes_what_instruct_generate_with_the_identity_computes(comfy_native):
    """Apply Identity to Model chained into Apply Instruction to Model (a native subject generation that keeps the
    person) equals Instruct Generate/Edit with the identity on its ``concepts`` input: the identity's token goes right
    after <image1> in both, both CLIP patches are read (the image vectors and the identity's), and the UNet carries
    the LoRA patches plus the identity's attention on the positive rows."""
    from facesmith.core.concept.lora import FusedLora
    from facesmith.core.concept.tokens import with_words
    from facesmith.core.identity.adapter import AttentionEntry, IdentityConditioner, attached
    from facesmith.core.instruct.instruction import image_token, parse
    from facesmith.core.instruct.model import InstructionConditioner
    from facesmith.core.models import load_pipeline
    from facesmith.nodes.instruct_nodes import GENERATE, MultimodalInstruction
    from facesmith.nodes.native_identity import FaceSmithApplyIdentityToModel
    from facesmith.nodes.native_instruct import FaceSmithApplyInstructionToModel

    model, clip, vae = comfy_native
    pipeline = load_pipeline(BASE, device="cpu", dtype=torch.float32)
    im = _random_instruct_model(pipeline)
    adapter, ref, identity = _shipped_adapter_identity(pipeline)
    images = {1: torch.from_numpy(ref[None]).float() / 255}
    ins = parse("a photo of <image1>, smiling, wearing a hat", [1])
    m1, c1 = FaceSmithApplyIdentityToModel().apply(model, clip, adapter, "<identity>", 0.8, 0.0, 1.0,
                                                   identity=identity)
    patched, positive, _, negative, _ = FaceSmithApplyInstructionToModel().apply(
        m1, c1, vae, im, MultimodalInstruction(ins, images), GENERATE, 0.7)
    # the text: what instruct_images encodes with the identity among its conditioners
    cond = InstructionConditioner(im, ins, images, pipeline, weight=0.7)
    idc = IdentityConditioner(adapter, identity, token="<identity>", weight=0.8)
    prompt = with_words(ins.prompt, "<identity>", image_token(1))
    for c in (cond, idc):
        prompt = c.rewrite_prompt(prompt)
    dp = pipeline.pipe
    with cond.applied(pipeline), idc.concept.applied(pipeline):
        ids = dp.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            want_text = dp.text_encoder(ids)[0]
    assert torch.allclose(positive[0][0].float(), want_text, atol=1e-4), (positive[0][0] - want_text).abs().max()
    plain_negative = clip.encode_from_tokens(clip.tokenize("")).float()
    assert torch.allclose(negative[0][0].float(), plain_negative, atol=1e-6)
    # the UNet: positive row (index 0 in a KSampler's batch) gets the identity, the negative row does not
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 128, generator=g)
    t = torch.tensor([300.0, 300.0])
    sigma = patched.get_model_object("model_sampling").sigma(t[:1])
    opts = dict(patched.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=sigma)
    with torch.no_grad():
        patched.patch_model()
        try:
            native = patched.model.diffusion_model.float()(x, timesteps=t, context=ctx, transformer_options=opts)
        finally:
            patched.unpatch_model()
        entry = AttentionEntry(net=adapter.net, ctx=identity.ctx[None], scale=0.8, rows=torch.tensor([False, True]))
        with FusedLora(im.lora, im.cfg.lora_alpha / im.cfg.lora_rank * 0.7).applied(dp.unet), \
                attached(dp.unet, entry):
            want = dp.unet(x, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(native, want, atol=1e-4), (native - want).abs().max()


def _x0_of(guider, latent, sigma: float = 3.0) -> torch.Tensor:
    """A guider's denoised estimate of one noised latent (one model call through ComfyUI's sampling path)."""
    import comfy.samplers  # type: ignore

    def first_call(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return model(x, sigmas[0] * x.new_ones(x.shape[0]), **(extra_args or {}))

    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    return guider.sample(noise, latent, comfy.samplers.KSAMPLER(first_call), torch.tensor([sigma, 0.0]), seed=5)


def test_instruction_guider_puts_the_identity_on_the_instruction_branch_only(comfy_native):
    """Instruction Guider (FaceSmith) on an identity chained into an instruction edit gives Generate's formula with the
    identity's attention on the source-and-instruction branch only (each branch computed alone as a reference).
    ComfyUI's DualCFGGuider batches (negative, cond2, cond1), so there the identity lands on the wrong branch."""
    import comfy.samplers  # type: ignore
    from comfy_extras.nodes_custom_sampler import DualCFGGuider  # type: ignore

    from facesmith.core.instruct.instruction import parse
    from facesmith.core.models import load_pipeline
    from facesmith.nodes.instruct_nodes import MultimodalInstruction
    from facesmith.nodes.native_identity import FaceSmithApplyIdentityToModel
    from facesmith.nodes.native_instruct import FaceSmithApplyInstructionToModel, FaceSmithInstructionGuider

    model, clip, vae = comfy_native
    pipeline = load_pipeline(BASE, device="cpu", dtype=torch.float32)
    im = _random_instruct_model(pipeline)
    adapter, ref, identity = _shipped_adapter_identity(pipeline)
    m1, c1 = FaceSmithApplyIdentityToModel().apply(model, clip, adapter, "<identity>", 1.0, 0.0, 1.0,
                                                   identity=identity)
    instruction = MultimodalInstruction(parse("make <image1> smiling", [1]), {1: torch.from_numpy(ref[None]) / 255})
    apply = FaceSmithApplyInstructionToModel().apply
    chained, positive, image_negative, negative, latent = apply(m1, c1, vae, im, instruction, "image1", 1.0)
    alone, _, _, _, _ = apply(model, clip, vae, im, instruction, "image1", 1.0)
    s_t, s_i = 3.0, 1.5
    got = _x0_of(FaceSmithInstructionGuider().get_guider(chained, positive, image_negative, negative, s_t, s_i)[0],
                 latent["samples"])

    def branch(m, cond):
        g = comfy.samplers.CFGGuider(m)
        g.set_conds(cond, negative)
        g.set_cfg(1.0)  # the conditional branch alone, as row 0
        return _x0_of(g, latent["samples"])

    eit, ei0, e00 = branch(chained, positive), branch(alone, image_negative), branch(alone, negative)
    want = e00 + s_i * (ei0 - e00) + s_t * (eit - ei0)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert (eit - branch(alone, positive)).abs().max() > 1e-3  # the identity changes the instruction branch
    dual = DualCFGGuider().get_guider(chained, positive, image_negative, negative, s_t, s_i, "regular")[0]
    assert (_x0_of(dual, latent["samples"]) - want).abs().max() > 1e-3


def test_sdxl_shaped_folder_computes_what_diffusers_computes(comfy_native, tmp_path):
    """An SDXL-shaped folder of non-standard size loads as ComfyUI's own SDXL model, two-encoder CLIP and VAE; the
    text conditioning (both encoders' penultimate layers + the pooled projection), the added size/crop input and
    the UNet's output equal the diffusers pipeline's, and a plain KSampler graph draws with them."""
    from facesmith.nodes.native_models import load_native

    folder = tiny_models.save_tiny_sdxl(tmp_path / "xl")
    model, clip, vae = load_native(folder, embedding_directory=[])
    pipe = tiny_models.build_tiny_sdxl(0)
    text_dtype = clip.cond_stage_model.clip_g.transformer.text_model.embeddings.token_embedding.weight.dtype
    for te in (pipe.text_encoder, pipe.text_encoder_2):  # ComfyUI keeps text encoders in its own dtype (fp16 on CPU)
        te.to(text_dtype).float()
    prompt = "a photo of a person with red hair"
    with torch.no_grad():
        want_ctx, _, want_pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                         do_classifier_free_guidance=False)
    cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    assert torch.allclose(cond.float(), want_ctx, atol=1e-4), (cond - want_ctx).abs().max()
    assert torch.allclose(pooled.float(), want_pooled, atol=1e-4), (pooled - want_pooled).abs().max()
    adm = model.model.encode_adm(pooled_output=pooled, width=24, height=16, crop_w=2, crop_h=1, target_width=24,
                                 target_height=16)
    time_ids = torch.tensor([[16.0, 24.0, 1.0, 2.0, 16.0, 24.0]])
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([400.0])
    with torch.no_grad():
        want = pipe.unet(x, t, encoder_hidden_states=want_ctx,
                         added_cond_kwargs={"text_embeds": want_pooled, "time_ids": time_ids}).sample
        got = model.model.diffusion_model.float()(x, timesteps=t, context=cond.float(), y=adm.float())
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        want = pipe.vae.decode(z).sample
        got = vae.first_stage_model.float().decode(z)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert model.model.latent_format.scale_factor == pytest.approx(pipe.vae.config.scaling_factor)
    assert type(model.model).__name__ == "SDXL"
    # the plain native graph: CLIPTextEncode -> KSampler -> VAEDecode
    import nodes as comfy_nodes  # type: ignore  (ComfyUI's own node module)

    positive = comfy_nodes.CLIPTextEncode().encode(clip, prompt)[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}  # this VAE scales by 2: Empty Latent Image assumes 8
    samples = comfy_nodes.KSampler().sample(model, 7, 4, 5.0, "euler", "normal", positive, negative, latent)[0]
    image = comfy_nodes.VAEDecode().decode(vae, samples)[0]
    assert tuple(image.shape) == (1, 16, 16, 3) and torch.isfinite(image).all() and image.std() > 0
    # a concept made for the built-in base is refused on this model, naming the base it was made for
    from facesmith.core.models import load_pipeline
    from facesmith.nodes.native_concept import FaceSmithApplyConcept

    concept = _concept_on_builtin_base(load_pipeline(BASE, device="cpu", dtype=torch.float32))
    with pytest.raises(ValueError, match=f"made for another base \\({concept.base_name!r}\\)"):
        FaceSmithApplyConcept().apply(model, clip, [concept], 1.0)
