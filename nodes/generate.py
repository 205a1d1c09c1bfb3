"""The Generate node: the one text-to-image path, with any mix of FaceSmith conditionings."""
from __future__ import annotations

from ..core.generate import (
    MAX_BATCH, MAX_SIZE, MAX_STEPS, SCHEDULER_NAMES, SEED_MAX, Conditioner, GenerateRequest, InvalidRequest, check_field, generate,
)
from ..core.memory import MemoryLimitExceeded, check_generate_memory
from ..core.models import BasePipeline
from .comfy_bridge import interruptible, node_progress
from .loaders import PIPELINE_TYPE
from .node_errors import input_error

CONCEPT_TYPE = "FACESMITH_CONCEPT"


def _concept_list(concepts) -> list:
    """``FACESMITH_CONCEPT`` values are a conditioner or a list of them; ``None`` (not connected) is none."""
    if concepts is None:
        return []
    if isinstance(concepts, (list, tuple)):
        out = []
        for item in concepts:
            out.extend(item if isinstance(item, (list, tuple)) else [item])
        return out
    return [concepts]


def conditioners_of(node: str, concepts) -> list:
    """A node's ``concepts`` input as FaceSmith conditionings; anything else is an error naming the node and input."""
    out = _concept_list(concepts)
    for item in out:
        if not isinstance(item, Conditioner):
            raise input_error(node, "concepts", f"got a {type(item).__name__}, which is not a FaceSmith "
                                                "conditioning (needs rewrite_prompt and applied)")
    return out


class FaceSmithGenerate:
    DISPLAY_NAME = "Generate (FaceSmith)"
    CATEGORY = "FaceSmith/Base"
    DESCRIPTION = (
        "Text-to-image with a FaceSmith base pipeline. Connect concepts (E4T concepts, identities, edits) to "
        "condition the image on them; all of them apply at once. Same seed and settings give the same images; "
        "image i of a batch uses seed + i."
    )
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The generated images, batch_size of them.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE_TYPE, {"tooltip": "The base pipeline from 'Load Base Model (FaceSmith)'."}),
                "prompt": ("STRING", {
                    "multiline": True, "default": "a photo of a face",
                    "tooltip": "What to draw. Concepts may add their tokens to it.",
                }),
                "negative_prompt": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "What to steer away from (used when cfg > 1). Empty means none.",
                }),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                    "tooltip": "Random seed; image i of the batch uses seed + i.",
                }),
                "steps": ("INT", {
                    "default": 20, "min": 1, "max": MAX_STEPS,
                    "tooltip": "Number of denoising steps.",
                }),
                "cfg": ("FLOAT", {
                    "default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "Classifier-free guidance scale: how strongly to follow the prompt. 1 or less turns "
                               "guidance off (faster, one model call per step).",
                }),
                "width": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Image width in pixels, a multiple of 8. 0 uses the model's native size.",
                }),
                "height": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Image height in pixels, a multiple of 8. 0 uses the model's native size.",
                }),
                "batch_size": ("INT", {
                    "default": 1, "min": 1, "max": MAX_BATCH,
                    "tooltip": "How many images to generate at once.",
                }),
                "scheduler": (list(SCHEDULER_NAMES), {
                    "default": "default",
                    "tooltip": "Sampler. 'default' is the model's own; dpmpp_2m is a good fast choice; "
                               "euler_ancestral and ddpm add fresh noise every step.",
                }),
            },
            "optional": {
                "concepts": (CONCEPT_TYPE, {
                    "tooltip": "Optional FaceSmith conditionings (concepts, identities, edits) to apply together.",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, cfg=None, width=None, height=None, batch_size=None):
        """Before anything runs (ComfyUI and the headless runner): cfg NaN/Inf, sizes not a multiple of 8. ComfyUI
        leaves these inputs' range checks to this method, so they are repeated here. Linked inputs arrive as None
        and are checked when the node runs."""
        for name, value in (("cfg", cfg), ("width", width), ("height", height), ("batch_size", batch_size)):
            if value is None:
                continue
            try:
                check_field(name, value)
            except InvalidRequest as exc:
                return str(input_error(cls.DISPLAY_NAME, exc.field, exc.reason))
        return True

    def run(self, pipeline, prompt, negative_prompt, seed, steps, cfg, width, height, batch_size, scheduler,
            concepts=None):
        node = self.DISPLAY_NAME
        if not isinstance(pipeline, BasePipeline):
            raise input_error(node, "pipeline", f"must come from 'Load Base Model (FaceSmith)', got "
                                                f"{type(pipeline).__name__}")
        conditioners = conditioners_of(node, concepts)
        request = GenerateRequest(
            prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, cfg=cfg, width=width,
            height=height, batch_size=batch_size, scheduler=scheduler,
        )
        try:
            request.validate()
        except InvalidRequest as exc:
            raise input_error(node, exc.field, exc.reason) from exc
        try:
            check_generate_memory(pipeline, request)
        except MemoryLimitExceeded as exc:
            raise input_error(node, "width/height/batch_size", exc) from exc
        with interruptible():
            images = generate(pipeline, request, conditioners, progress=node_progress(node))
        return (images,)


NODE_CLASS_MAPPINGS = {"FaceSmithGenerate": FaceSmithGenerate}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
