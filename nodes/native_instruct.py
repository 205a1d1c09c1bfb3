"""The instruction model on native ComfyUI models: ``Apply Instruction to Model (FaceSmith)``.

What Generate's ``InstructionConditioner`` does, with ComfyUI's own objects (no second copy of the base):

- the referenced images' word vectors (``InstructModel.vectors_from``: the same fusion network, fed by ComfyUI's VAE
  encoder through ``pooled_tokens``) on a clone of CLIP, which encodes the instruction -> ``positive``;
- the LoRA offsets (``lora_delta``, attention and convolution layers) as weight patches on ``model.clone()``;
- for an edit, the source latents as extra UNet input channels: ``conv_in`` is replaced on the clone by
  ``ExtraChannelsConv`` (``core/image_conditioning.py``), and every conditioning carries the channels ComfyUI
  concatenates to the UNet input (``noise_concat`` -> ``c_concat``): ``positive`` and ``image_negative`` carry the
  source, ``negative`` zeros (no source).

Guidance: ``Instruction Guider (FaceSmith)`` (positive, image_negative, negative; text and image guidance) gives
``e(0,0) + s_I (e(I,0) - e(0,0)) + s_T (e(I,T) - e(I,0))``, Generate's formula; a plain KSampler with positive /
image_negative is image guidance 1. ComfyUI's ``DualCFGGuider`` computes the same formula but batches its conditionings
as (negative, cond2, cond1), so the conditional one is not row 0: model patches that act on the positive rows only (an
identity from Apply Identity to Model, IP-Adapter-style patches: ComfyUI's ``cond_or_uncond`` convention, 0 =
positive) would land on the negative. The FaceSmith guider batches (positive, image_negative, negative).
"""
from __future__ import annotations

import torch

from ..core.concept.inference import lora_delta
from .instruct_nodes import GENERATE, IMAGE_INPUTS, INSTRUCT_MODEL_TYPE, INSTRUCTION_TYPE, SOURCES, \
    MultimodalInstruction
from .native_concept import clip_concept_tokens, patch_clip
from .native_vae import comfy_vae_tokens
from .node_errors import input_error

CONV_IN = "diffusion_model.input_blocks.0.0"


def lora_patches(model, instruct_model) -> dict:
    """{ComfyUI weight key: (offset,)} of the instruction model's LoRA at strength 1 (checked against the model)."""
    import comfy.utils  # type: ignore

    cfg = instruct_model.cfg
    scale = cfg.lora_alpha / cfg.lora_rank
    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    weights = model.model.state_dict()
    patches = {}
    for path, (down, up) in instruct_model.lora.items():
        key = mapping.get(f"{path}.weight")
        delta = lora_delta(down, up, scale, "cpu", torch.float32)
        target = weights.get(f"diffusion_model.{key}") if key else None
        if target is None or tuple(target.shape) != tuple(delta.shape):
            raise ValueError(f"the instruction model was trained for base {instruct_model.base_name!r} "
                             f"({instruct_model.base_fingerprint}); this model has no layer {path} of shape "
                             f"{tuple(delta.shape)}")
        patches[f"diffusion_model.{key}"] = (delta,)
    return patches


def patch_model(model, instruct_model, weight: float, edit: bool):
    """``model.clone()`` with the LoRA offsets (strength ``weight``) and, for an edit, the extra input channels."""
    from ..core.image_conditioning import ExtraChannelsConv, check_extra_weight

    patched = model.clone()
    patches = lora_patches(model, instruct_model)
    added = patched.add_patches(patches, strength_patch=float(weight))
    if set(patches) - set(added):
        raise ValueError(f"the model has no weights {sorted(set(patches) - set(added))[:3]} for the instruction "
                         "model's LoRA (another base?)")
    if edit:
        conv = patched.get_model_object(CONV_IN)
        extra = instruct_model.source_weight * float(weight)
        check_extra_weight(conv, extra, instruct_model.cfg.source_channels)
        patched.add_object_patch(CONV_IN, ExtraChannelsConv(conv, extra))
    return patched


def _encode(clip, text: str, extra: dict) -> list:
    tokens = clip.tokenize(text)
    out = clip.encode_from_tokens_scheduled(tokens)
    return [[c, dict(d, **extra)] for c, d in out]


class FaceSmithApplyInstructionToModel:
    DISPLAY_NAME = "Apply Instruction to Model (FaceSmith)"
    CATEGORY = "FaceSmith/Instruct"
    DESCRIPTION = (
        "An instruction model on native ComfyUI models: the instruction (text + images) encoded by a clone of CLIP "
        "that reads each <imageN> as that image's word vectors, the model's LoRA as weight patches on a clone of "
        "MODEL and, for an edit, the source image's latents as extra UNet input channels. Sample with "
        "'Instruction Guider (FaceSmith)' (text and image guidance) and SamplerCustomAdvanced, or with a KSampler on "
        "positive / image_negative (image guidance 1), starting from the returned latent. Chained after 'Apply "
        "Identity to Model (FaceSmith)', the identity's token goes right after <image1> unless the instruction "
        "writes it. The same maths as Instruct Generate/Edit (FaceSmith); the picture comes out at the model's "
        "native size.")
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("model", "positive", "image_negative", "negative", "latent")
    OUTPUT_TOOLTIPS = (
        "A clone of the model with the instruction model's patches.",
        "The instruction (text + image vectors), with the source for an edit.",
        "No instruction, the source only (Instruction Guider's image_negative; KSampler's negative).",
        "Neither instruction nor source (Instruction Guider's negative).",
        "An empty latent of the source's latent size (the model's native size for generation).")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A native model of the base the instruction model was trained for (Load "
                                           "Checkpoint (FaceSmith) for the built-in one)."}),
            "clip": ("CLIP", {"tooltip": "The text encoder of that model."}),
            "vae": ("VAE", {"tooltip": "The VAE of that model (encodes the images)."}),
            "instruct_model": (INSTRUCT_MODEL_TYPE, {"tooltip": "From 'Load Instruction Model (FaceSmith)'."}),
            "instruction": (INSTRUCTION_TYPE, {"tooltip": "From 'Multimodal Instruction (FaceSmith)'."}),
            "source": (list(SOURCES), {"default": IMAGE_INPUTS[0],
                                       "tooltip": "The image to edit, or 'none (generate)'."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                 "tooltip": "Strength of the LoRA and source channels (1 = as trained)."}),
        }}

    def apply(self, model, clip, vae, instruct_model, instruction, source, weight):
        from ..core.instruct.model import InstructModel, reference_images, resized, to_unit_bchw, \
            with_tokens_after_image1

        node = self.DISPLAY_NAME
        if not isinstance(instruct_model, InstructModel):
            raise input_error(node, "instruct_model", "must come from 'Load Instruction Model (FaceSmith)'")
        if not isinstance(instruction, MultimodalInstruction):
            raise input_error(node, "instruction", "must come from 'Multimodal Instruction (FaceSmith)'")
        ins = instruction.instruction
        number = None if source == GENERATE else IMAGE_INPUTS.index(source) + 1 if source in IMAGE_INPUTS else -1
        if number == -1 or (number is not None and number not in instruction.images):
            raise input_error(node, "source", f"is {source!r}, but the instruction has images "
                                              f"{', '.join(f'image{n}' for n in ins.images)}")
        cfg = instruct_model.cfg
        size = int(cfg.image_size)
        concepts = []
        from ..core.concept.concept import Concept
        from ..core.instruct.instruction import image_token

        for n in range(1, max(ins.images) + 1):
            if n in instruction.images:
                x = reference_images(instruction.images[n], size)
                vec = instruct_model.vectors_from(x, comfy_vae_tokens(vae, x, cfg.grid)[0])[0]
            else:
                vec = instruct_model.class_embedding.clone()
            concepts.append(Concept(token=image_token(n), embedding=vec, base_name=instruct_model.base_name,
                                    base_fingerprint=instruct_model.base_fingerprint, method="instruct"))
        try:
            patched = patch_model(model, instruct_model, float(weight), number is not None)
            text_clip = patch_clip(clip, concepts)
        except ValueError as exc:
            raise input_error(node, "instruct_model", exc) from exc
        latent_format = model.get_model_object("latent_format")
        if number is not None:
            src = resized(to_unit_bchw(instruction.images[number])[:1], size) * 2 - 1
            lat = latent_format.process_in(comfy_vae_tokens(vae, src, cfg.grid)[1])
            with_src, no_src = {"noise_concat": lat}, {"noise_concat": torch.zeros_like(lat)}
            empty = torch.zeros_like(lat)
        else:
            with_src = no_src = {}
            probe = comfy_vae_tokens(vae, torch.zeros(1, 3, size, size), cfg.grid)[1]
            empty = torch.zeros_like(probe)
        prompt = with_tokens_after_image1(ins.prompt, clip_concept_tokens(clip))
        positive = _encode(text_clip, prompt, with_src)
        image_negative = _encode(clip, "", with_src)
        negative = _encode(clip, "", no_src)
        return (patched, positive, image_negative, negative, {"samples": empty})


_GUIDER_CLASS = None


def instruction_guider_class():
    """ComfyUI's ``CFGGuider`` with Generate's two-scale formula; its conditionings run as (positive, image_negative,
    negative): row 0 is the conditional one, as ComfyUI's ``cond_or_uncond`` convention has it (made once, on first
    use: the pack imports without ComfyUI)."""
    global _GUIDER_CLASS
    if _GUIDER_CLASS is None:
        import comfy.samplers  # type: ignore

        class InstructionGuider(comfy.samplers.CFGGuider):
            def set_conds(self, positive, image_negative, negative):
                middle = [[c, dict(d, prompt_type="negative")] for c, d in image_negative]
                self.inner_set_conds({"positive": positive, "middle": middle, "negative": negative})

            def set_scales(self, text_guidance: float, image_guidance: float):
                self.cfg, self.image_cfg = float(text_guidance), float(image_guidance)

            def predict_noise(self, x, timestep, model_options={}, seed=None):
                conds = [self.conds.get(k) for k in ("positive", "middle", "negative")]
                eit, ei0, e00 = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
                # e00 + s_I (ei0 - e00) through ComfyUI's cfg_function (its sampler_cfg / post-cfg hooks run), then
                # + s_T (eit - ei0)
                image = comfy.samplers.cfg_function(self.inner_model, ei0, e00, self.image_cfg, x, timestep,
                                                    model_options=model_options, cond=conds[1], uncond=conds[2])
                return image + (eit - ei0) * self.cfg

        _GUIDER_CLASS = InstructionGuider
    return _GUIDER_CLASS


class FaceSmithInstructionGuider:
    DISPLAY_NAME = "Instruction Guider (FaceSmith)"
    CATEGORY = "FaceSmith/Instruct"
    DESCRIPTION = (
        "Guidance for an instruction on native models (after 'Apply Instruction to Model (FaceSmith)'), for "
        "SamplerCustomAdvanced: e(0,0) + image_guidance (e(source) - e(0,0)) + text_guidance (e(source, "
        "instruction) - e(source)), Instruct Generate/Edit's formula. Unlike DualCFGGuider it runs the positive "
        "conditioning as row 0, so an identity from 'Apply Identity to Model (FaceSmith)' applies to it.")
    RETURN_TYPES = ("GUIDER",)
    RETURN_NAMES = ("guider",)
    OUTPUT_TOOLTIPS = ("For SamplerCustomAdvanced.",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model from 'Apply Instruction to Model (FaceSmith)'."}),
            "positive": ("CONDITIONING", {"tooltip": "Its positive output (instruction and source)."}),
            "image_negative": ("CONDITIONING", {"tooltip": "Its image_negative output (the source only)."}),
            "negative": ("CONDITIONING", {"tooltip": "Its negative output (neither)."}),
            "text_guidance": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                        "tooltip": "How strongly to follow the instruction."}),
            "image_guidance": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 100.0, "step": 0.05, "round": 0.01,
                                         "tooltip": "Edits: how closely to keep the source (higher keeps more); "
                                                    "generation has no source, so use 1."}),
        }}

    def get_guider(self, model, positive, image_negative, negative, text_guidance, image_guidance):
        guider = instruction_guider_class()(model)
        guider.set_conds(positive, image_negative, negative)
        guider.set_scales(text_guidance, image_guidance)
        return (guider,)


NODE_CLASS_MAPPINGS = {"FaceSmithApplyInstructionToModel": FaceSmithApplyInstructionToModel,
                       "FaceSmithInstructionGuider": FaceSmithInstructionGuider}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
