"""FaceSmith concepts on native ComfyUI models: ``Apply Concept (FaceSmith)`` patches clones of MODEL and CLIP.

The offsets and vectors come from ``core/concept/inference.py``, the module the diffusers Generate path uses too:
the LoRA offsets become ComfyUI "diff" weight patches on ``model.clone()`` (ComfyUI scales them by the node's weight,
casts and offloads them like any LoRA, and composes them with other patches); the token's vectors become an
embedding that the cloned CLIP's tokenizer returns for the token, exactly as it returns ``embedding:NAME`` files.
"""
from __future__ import annotations

import copy
import functools
import re

import torch

from ..core.concept.inference import concept_lora_deltas, token_vectors
from .concept_nodes import CONCEPT_TYPE, _concepts
from .node_errors import input_error


def concept_patches(model, concepts: list) -> dict:
    """{ComfyUI weight key: (offset,)} of the concepts' LoRA layers on ``model`` (offsets at strength 1)."""
    import comfy.utils  # type: ignore

    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)  # diffusers key -> ComfyUI key
    weights = model.model.state_dict()  # references to the weights, for shape checks (ComfyUI would only log)
    patches = {}
    for concept in concepts:
        for path, delta in concept_lora_deltas(concept).items():
            key = mapping.get(f"{path}.weight")
            if key is None:
                raise ValueError(f"the concept {concept.token!r} was made for another base ({concept.base_name!r}): "
                                 f"it has a LoRA layer {path!r} this model does not have")
            key = f"diffusion_model.{key}"
            target = weights.get(key)
            if target is None or tuple(target.shape) != tuple(delta.shape):
                raise ValueError(f"the concept {concept.token!r} was made for another base ({concept.base_name!r}): "
                                 f"its LoRA offset for "
                                 f"{path} is {tuple(delta.shape)}, the model's weight "
                                 f"{None if target is None else tuple(target.shape)}")
            patches[key] = (patches[key][0] + delta,) if key in patches else (delta,)
    return patches


def patch_model(model, concepts: list, weight: float):
    """``model.clone()`` with each concept's LoRA offsets as ComfyUI weight patches of strength ``weight``."""
    patches = concept_patches(model, concepts)
    patched = model.clone()
    added = patched.add_patches(patches, strength_patch=float(weight))
    missing = sorted(set(patches) - set(added))
    if missing:
        raise ValueError(f"the model has no weights {missing[:3]} for the concept's LoRA (another base?)")
    return patched


def step_range_hooks(model, concepts: list, weight: float, start: float, end: float):
    """The concepts' offsets as a ComfyUI weight hook active from ``start`` to ``end`` (fractions of the sampling
    schedule) at strength ``weight``: ComfyUI's hook keyframes (comfy.hooks, what its Create Hook LoRA + keyframe
    nodes build), carried by the conditioning a CLIP with ``apply_hooks_to_conds`` encodes."""
    import comfy.hooks as hooks  # type: ignore

    group = hooks.HookGroup()
    hook = hooks.WeightHook(strength_model=float(weight), strength_clip=0.0)
    hook.weights = {k: ("diff", v) for k, v in concept_patches(model, concepts).items()}
    hook.need_weight_init = False
    group.add(hook)
    frames = hooks.HookKeyframeGroup()
    if start > 0.0:
        frames.add(hooks.HookKeyframe(strength=0.0, start_percent=0.0))
    frames.add(hooks.HookKeyframe(strength=1.0, start_percent=float(start)))
    if end < 1.0:
        frames.add(hooks.HookKeyframe(strength=0.0, start_percent=float(end)))
    group.set_keyframes_on_hooks(hook_kf=frames)
    return group


_TABLE = "_facesmith_concepts"  # on a patched CLIP's tokenizer copies: every concept patched so far


def _embedding_key(index: int) -> str:
    return f"facesmith_concept_{index}"


def _lookup(inner, embedding_name: str):
    """``SDTokenizer._try_get_embedding`` that first knows the patched concepts' keys."""
    known = getattr(inner, _TABLE)
    words = embedding_name.split()
    first, leftover = (words[0], " ".join(words[1:])) if words else ("", "")
    stripped = first.rstrip(",.;:!?)")
    if stripped in known:
        rest = (first[len(stripped):] + " " + leftover).strip()
        return known[stripped], rest
    return type(inner)._try_get_embedding(inner, embedding_name)


def _tokenize(outer, text: str, return_word_ids=False, **kwargs):
    """The tokenizer's own ``tokenize_with_weights`` after every patched token became ``embedding:KEY``."""
    for pattern, key, _token in getattr(outer, _TABLE):
        text = pattern.sub(lambda _m, k=key: f" embedding:{k} ", text)
    return type(outer).tokenize_with_weights(outer, text, return_word_ids, **kwargs)


def patch_clip(clip, concepts: list):
    """``clip.clone()`` whose tokenizer reads each concept's token as the concept's vectors (like an embedding).
    Patches chain: a CLIP patched before (another concept, an identity) keeps reading its tokens, and a token patched
    again reads its newest vectors."""
    patched = clip.clone()
    outer = copy.copy(clip.tokenizer)
    name = getattr(outer, "clip", "clip_l")
    inner = copy.copy(getattr(outer, name))
    setattr(outer, name, inner)
    width = int(getattr(inner, "embedding_size", 0) or 0)
    known = dict(getattr(inner, _TABLE, {}))
    replace = list(getattr(outer, _TABLE, []))
    for concept in concepts:
        vectors = [v for _, v in token_vectors(concept)]
        if width and concept.dim != width:
            raise ValueError(f"the concept {concept.token!r} has {concept.dim}-wide vectors, the CLIP takes {width}")
        key = _embedding_key(len(known))
        known[key] = torch.stack(vectors)
        pattern = re.compile(re.escape(concept.token) + r"(?!#)", re.IGNORECASE)
        replace = [(pattern, key, concept.token)] + [r for r in replace if r[2].lower() != concept.token.lower()]
    setattr(inner, _TABLE, known)
    setattr(outer, _TABLE, replace)
    inner._try_get_embedding = functools.partial(_lookup, inner)
    if inner.embedding_directory is None:
        inner.embedding_directory = []  # ComfyUI looks embeddings up only where a directory is set
    outer.tokenize_with_weights = functools.partial(_tokenize, outer)
    patched.tokenizer = outer
    return patched


def clip_concept_tokens(clip) -> list[str]:
    """The tokens FaceSmith patched onto this CLIP (concepts, identities), newest first."""
    return [token for _, _, token in getattr(clip.tokenizer, _TABLE, [])]


class FaceSmithApplyConcept:
    DISPLAY_NAME = "Apply Concept (FaceSmith)"
    CATEGORY = "FaceSmith/Concept"
    DESCRIPTION = (
        "Applies FaceSmith concepts (Embed Concept / Load Concept) to native ComfyUI models: the concept's LoRA "
        "offsets as weight patches on a clone of MODEL (scaled by 'weight', composing with LoraLoader, ControlNet "
        "and other patches), and its token on a clone of CLIP (write the token in CLIPTextEncode, e.g. 'a photo of "
        "<fs-person> smiling'). The same maths as Generate (FaceSmith) (core/concept/inference.py). weight 0 turns "
        "the concept off: MODEL and CLIP are returned unchanged and the token is plain text."
    )
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    OUTPUT_TOOLTIPS = ("A clone of the model with the concepts' LoRA patches.",
                       "A clone of the CLIP whose tokenizer knows the concepts' tokens.")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A native model of the base the concepts were made on (Load Checkpoint "
                                           "(FaceSmith) for the built-in one)."}),
            "clip": ("CLIP", {"tooltip": "The text encoder of that model."}),
            "concepts": (CONCEPT_TYPE, {"tooltip": "The concept(s) to apply (several of one domain share its "
                                                   "domain LoRA, as in Generate)."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05,
                                 "tooltip": "Strength of the concepts' LoRA offsets (1 = as made; 0 = off)."}),
        }, "optional": {
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Where in the sampling schedule the LoRA offsets start (0 = the "
                                                   "first step). Other than 0..1, they ride on the prompt's "
                                                   "conditioning as a ComfyUI hook (encode the prompt with this "
                                                   "node's CLIP)."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Where the LoRA offsets stop (1 = the last step)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent=None, end_percent=None):
        start = 0.0 if start_percent is None else start_percent
        end = 1.0 if end_percent is None else end_percent
        if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
            return str(input_error(cls.DISPLAY_NAME, "start_percent", "start and end must lie in 0..1"))
        if start > end:
            return str(input_error(cls.DISPLAY_NAME, "start_percent", f"{start} is after end_percent {end}"))
        return True

    def apply(self, model, clip, concepts, weight, start_percent=0.0, end_percent=1.0):
        from ..core.concept.concept import Concept

        node = self.DISPLAY_NAME
        items = Concept.prepare_conditioners(_concepts(concepts))  # the domain-LoRA sharing Generate uses
        if not items:
            raise input_error(node, "concepts", "is empty")
        if float(weight) == 0.0:
            return (model, clip)
        start, end = float(start_percent), float(end_percent)
        if start > end:
            raise input_error(node, "start_percent", f"{start} is after end_percent {end}")
        try:
            if (start, end) == (0.0, 1.0):
                return (patch_model(model, items, float(weight)), patch_clip(clip, items))
            patched_clip = patch_clip(clip, items)
            patched_clip.apply_hooks_to_conds = step_range_hooks(model, items, float(weight), start, end)
            return (model.clone(), patched_clip)
        except ValueError as exc:
            raise input_error(node, "concepts", exc) from exc


NODE_CLASS_MAPPINGS = {"FaceSmithApplyConcept": FaceSmithApplyConcept}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
