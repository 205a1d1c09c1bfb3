"""The identity adapter on native ComfyUI models: ``Apply Identity to Model (FaceSmith)`` patches clones of MODEL
and CLIP with a (saved or just made) identity.

The maths is ``core/identity/adapter_net.py``'s, the module the diffusers Generate path uses: each UNet
cross-attention layer gets an ``attn2`` replace patch (ComfyUI's mechanism, the one attention-patching packs use) that
adds ``weight x ip_attention(q, k_ip, v_ip)`` to ComfyUI's own attention of the text, on the conditional rows only,
between ``start_at`` and ``end_at`` (read from the sampler's sigma as a timestep, like the diffusers path) and inside
the optional mask; the identity token's vectors go to a clone of CLIP, as ``Apply Concept`` does for concepts.
"""
from __future__ import annotations

import torch

from ..core.identity.adapter_net import ip_attention, region_weights, schedule_active
from ..core.identity.adapter import COMBINE_MODES
from .identity_adapter_nodes import ADAPTER_TYPE, IDENTITY_TYPE, checked_faces
from .identity_nodes import FACES_TYPE
from .native_concept import patch_clip
from .native_vae import comfy_vae_tokens, model_native_size
from .node_errors import input_error

_BLOCKS = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


def attention_sites(model, adapter) -> list[tuple[int, str, int, int]]:
    """(adapter layer index, ComfyUI block name, block number, transformer index) of each adapter layer, checked
    against the model's cross-attention weights (another base is refused, naming the layer)."""
    import comfy.utils  # type: ignore

    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    weights = model.model.state_dict()
    sites = []
    for i, (path, inner) in enumerate(zip(adapter.cfg.layers, adapter.cfg.inner_dims)):
        key = mapping.get(f"{path}.to_k.weight")
        target = weights.get(f"diffusion_model.{key}") if key else None
        if target is None or tuple(target.shape) != (inner, adapter.cfg.cross_dim):
            raise ValueError(f"the identity adapter was trained for base {adapter.base_name!r} "
                             f"({adapter.base_fingerprint}); this model has no matching cross-attention layer "
                             f"{path} (its key/value weights: {None if target is None else tuple(target.shape)})")
        parts = key.split(".")
        block = _BLOCKS[parts[0]]
        number = 0 if block == "middle" else int(parts[1])
        index = int(parts[parts.index("transformer_blocks") + 1])
        sites.append((i, block, number, index))
    return sites


def make_replace(net, layer: int, ctx: torch.Tensor, weight: float, start: float, end: float, mask, model_sampling):
    """An ``attn2`` replace function: ComfyUI's attention of the text plus the identity branch."""
    from comfy.ldm.modules.attention import optimized_attention  # type: ignore

    def replace(q, k, v, extra):
        heads = extra["n_heads"]
        out = optimized_attention(q, k, v, heads)
        sigmas = extra.get("sigmas")
        if sigmas is not None:
            t = float(model_sampling.timestep(sigmas.flatten()[:1].to(torch.float32)).flatten()[0])
            if not schedule_active(t, start, end):
                return out
        with torch.no_grad():
            k_ip, v_ip = net.ip_kv(layer, ctx.to(q.device, torch.float32)[None])
        rows = q.shape[0]
        ip = ip_attention(q, k_ip.to(q.dtype).expand(rows, -1, -1), v_ip.to(q.dtype).expand(rows, -1, -1), heads)
        flags = extra.get("cond_or_uncond") or [0]
        per = rows // len(flags)
        keep = torch.tensor([1.0 if f == 0 else 0.0 for f in flags for _ in range(per)], device=q.device,
                            dtype=q.dtype).view(-1, 1, 1)
        shape = extra.get("original_shape")
        w = region_weights(mask, ip.shape[1], tuple(shape[-2:])) if mask is not None and shape else None
        ip = ip * keep * float(weight)
        if w is not None:
            ip = ip * w.to(ip.device, ip.dtype)
        return out + ip

    return replace


def patch_model(model, adapter, identity, weight: float, start: float, end: float, mask=None):
    """``model.clone()`` with the identity's attention patches."""
    patched = model.clone()
    sampling = patched.get_model_object("model_sampling")
    net = adapter.net.float().eval()
    for layer, block, number, index in attention_sites(model, adapter):
        patched.set_model_attn2_replace(make_replace(net, layer, identity.ctx, weight, start, end, mask, sampling),
                                        block, number, index)
    return patched


def identity_from_faces(node: str, model, vae, adapter, faces, combine: str):
    """The adapter's identity of face crops, its VAE patch tokens computed by the native VAE at the model's size
    (the same tokens the diffusers path computes: ``core/vae_tokens``)."""
    import torch.nn.functional as F

    from ..core.identity.adapter import crops_to_bchw

    if vae is None:
        raise input_error(node, "vae", "is needed to make an identity from faces (the model's VAE)")
    checked_faces(node, faces, adapter)  # refuses no faces; warns (log) when real faces meet a SynthFace adapter
    x = crops_to_bchw(faces.crops)
    size = model_native_size(model, vae)
    with torch.no_grad():
        face = adapter.face_encoder.embed_aligned(x)
        px = F.interpolate(x.float(), size=(size, size), mode="area") * 2 - 1
        patches = comfy_vae_tokens(vae, px, adapter.cfg.patch_pool)[0]
    if patches.shape[-1] != adapter.cfg.patch_dim:
        raise input_error(node, "vae", f"gives {patches.shape[-1]}-channel patch tokens; the adapter was trained "
                                       f"on {adapter.cfg.patch_dim} (base {adapter.base_name!r})")
    return adapter.identity_from_features(face, patches, combine)


def clip_word_vectors(clip, words: str) -> torch.Tensor:
    """The input embeddings of ``", " + words`` in a ComfyUI CLIP (SD1.5-type: its ``clip_l`` tokenizer and token
    embedding), the vectors ``concept.tokens.word_vectors`` takes from a diffusers text encoder."""
    tok = getattr(clip.tokenizer, getattr(clip.tokenizer, "clip", "clip_l"))
    ids = tok.tokenizer(f", {words}", add_special_tokens=False)["input_ids"]
    enc = getattr(clip.cond_stage_model, getattr(clip.cond_stage_model, "clip", "clip_l"))
    weight = enc.transformer.get_input_embeddings().weight
    return weight[torch.as_tensor(ids, dtype=torch.long, device=weight.device)].detach().float().cpu()


class FaceSmithApplyIdentityToModel:
    DISPLAY_NAME = "Apply Identity to Model (FaceSmith)"
    CATEGORY = "FaceSmith/Identity"
    DESCRIPTION = (
        "Applies an identity (from 'Apply Identity' or 'Load Identity', or made here from FACES through the native "
        "VAE) to native ComfyUI models: attention patches "
        "on a clone of MODEL (the identity adapter's decoupled cross-attention, composing with KSampler, LoRAs and "
        "other patches) and the identity token on a clone of CLIP (write it in CLIPTextEncode, e.g. 'a photo of "
        "<identity>, smiling'). The same maths as Generate (FaceSmith). weight 0 returns MODEL and CLIP unchanged.")
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    OUTPUT_TOOLTIPS = ("A clone of the model with the identity's attention patches.",
                       "A clone of the CLIP whose tokenizer reads the identity token.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        from ..core.identity.adapter import DEFAULT_TOKEN, DEFAULT_WEIGHT

        return {"required": {
            "model": ("MODEL", {"tooltip": "A native model of the base the adapter was trained for (Load Checkpoint "
                                           "(FaceSmith) for the built-in one)."}),
            "clip": ("CLIP", {"tooltip": "The text encoder of that model."}),
            "adapter": (ADAPTER_TYPE, {"tooltip": "From 'Load Identity Adapter (FaceSmith)'."}),
            "token": ("STRING", {"default": DEFAULT_TOKEN, "tooltip": "The identity's token in the prompt."}),
            "weight": ("FLOAT", {"default": DEFAULT_WEIGHT, "min": 0.0, "max": 5.0, "step": 0.05,
                                 "tooltip": "Strength of the identity (0 = off)."}),
            "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "Fraction of the denoising where the identity starts to act."}),
            "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "Fraction of the denoising where it stops."}),
        }, "optional": {
            "identity": (IDENTITY_TYPE, {"tooltip": "A made or saved identity (from 'Apply Identity' or 'Load "
                                                    "Identity'); or connect faces and vae instead."}),
            "faces": (FACES_TYPE, {"tooltip": "Faces of ONE person from 'Face Analysis': the identity is made here, "
                                              "through the native VAE (no second copy of the model)."}),
            "vae": ("VAE", {"tooltip": "The VAE of the model, for an identity made from faces."}),
            "combine": (list(COMBINE_MODES), {"default": "average",
                                              "tooltip": "Several photos: how they are mixed (as Apply Identity)."}),
            "mask": ("MASK", {"tooltip": "Where the identity acts (white = yes); its first mask."}),
            "words": ("STRING", {"forceInput": True, "tooltip": (
                "Who the person is in words (Face Describe's identity_words): the token then reads '<token>, "
                "words' in CLIPTextEncode. Several lines: each trait takes its most common value.")})}}

    @classmethod
    def VALIDATE_INPUTS(cls, start_at=None, end_at=None):
        if isinstance(start_at, (int, float)) and isinstance(end_at, (int, float)) and start_at > end_at:
            return str(input_error(cls.DISPLAY_NAME, "end_at", f"({end_at}) is before start_at ({start_at})"))
        return True

    def apply(self, model, clip, adapter, token, weight, start_at, end_at, identity=None, faces=None, vae=None,
              combine="average", mask=None, words=None):
        from ..core.identity.adapter import AdapterMismatch, IdentityConditioner
        from ..core.understand.check import merged_words

        node = self.DISPLAY_NAME
        if float(weight) == 0.0:
            return (model, clip)
        if faces is not None:
            identity = identity_from_faces(node, model, vae, adapter, faces, combine)
        elif identity is None:
            raise input_error(node, "identity", "is not connected: connect an identity, or faces and vae")
        if words is not None:
            said = merged_words(words)
            identity = identity.with_word_vectors(said, clip_word_vectors(clip, said) if said else None)
        m = None if mask is None else (mask[0] if mask.dim() == 3 else mask)
        try:
            cond = IdentityConditioner(adapter, identity, token=token.strip(), weight=float(weight),
                                       start_at=float(start_at), end_at=float(end_at), mask=m)
        except AdapterMismatch as exc:
            raise input_error(node, "identity", exc) from exc
        except ValueError as exc:
            raise input_error(node, "token" if "token" in str(exc) else "end_at", exc) from exc
        try:
            patched = patch_model(model, adapter, identity, float(weight), float(start_at), float(end_at),
                                  cond.mask)
        except ValueError as exc:
            raise input_error(node, "adapter", exc) from exc
        return (patched, patch_clip(clip, [cond.concept]))


NODE_CLASS_MAPPINGS = {"FaceSmithApplyIdentityToModel": FaceSmithApplyIdentityToModel}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
