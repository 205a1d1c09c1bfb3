"""The instruction model on native ComfyUI models: ``Apply Instruction to Model (FaceSmith)``.

What Generate's ``InstructionConditioner`` does, with ComfyUI's own objects (no second copy of the base):

- the referenced images' word vectors (``InstructModel.vectors_from``: the same fusion network, fed by ComfyUI's VAE
  encoder through ``pooled_tokens``) on a clone of CLIP, which encodes the instruction -> ``positive``;
- the LoRA offsets (``lora_delta``, attention and convolution layers) as weight patches on ``model.clone()``;
- for an edit, the source latents as extra UNet input channels: ``conv_in`` is replaced on the clone by
  ``ExtraChannelsConv`` (``core/image_conditioning.py``), and every conditioning carries the channels ComfyUI
  concatenates to the UNet input (``noise_concat`` -> ``c_concat``): ``positive`` and ``image_negative`` carry the
  source, ``negative`` zeros (no source).

Guidance: ComfyUI's ``DualCFGGuider`` with cond1 = positive, cond2 = image_negative, negative = negative,
``cfg_conds`` = text guidance, ``cfg_cond2_negative`` = image guidance gives ``e(0,0) + s_I (e(I,0) - e(0,0)) +
s_T (e(I,T) - e(I,0))``, Generate's formula; a plain KSampler with positive / image_negative is image guidance 1.
"""
from __future__ import annotations

import torch

from ..core.concept.inference import lora_delta
from .instruct_nodes import GENERATE, IMAGE_INPUTS, INSTRUCT_MODEL_TYPE, INSTRUCTION_TYPE, SOURCES, \
    MultimodalInstruction
from .native_concept import patch_clip
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
        "DualCFGGuider (cond1 = positive, cond2 = image_negative, negative = negative; cfg_conds = text guidance, "
        "cfg_cond2_negative = image guidance) and SamplerCustomAdvanced, or with a KSampler on positive / "
        "image_negative (image guidance 1), starting from the returned latent. The same maths as Instruct "
        "Generate/Edit (FaceSmith); the picture comes out at the model's native size.")
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("model", "positive", "image_negative", "negative", "latent")
    OUTPUT_TOOLTIPS = (
        "A clone of the model with the instruction model's patches.",
        "The instruction (text + image vectors), with the source for an edit.",
        "No instruction, the source only (DualCFGGuider's cond2; KSampler's negative).",
        "Neither instruction nor source (DualCFGGuider's negative).",
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
        from ..core.instruct.model import InstructModel, reference_images, resized, to_unit_bchw

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
        positive = _encode(text_clip, ins.prompt, with_src)
        image_negative = _encode(clip, "", with_src)
        negative = _encode(clip, "", no_src)
        return (patched, positive, image_negative, negative, {"samples": empty})


NODE_CLASS_MAPPINGS = {"FaceSmithApplyInstructionToModel": FaceSmithApplyInstructionToModel}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
