"""Loader nodes: base pipelines (SD1.5 / SDXL) from diffusers folders or single-file checkpoints."""
from __future__ import annotations

from ..core import paths
from ..core.devices import DEVICE_CHOICES, DTYPE_CHOICES, pick_device, pick_dtype
from ..core.models import ARCH_CHOICES, ArchMismatch, list_base_models, load_pipeline, resolve_base_model
from .comfy_bridge import grad_enabled
from .node_errors import input_error

try:  # inside ComfyUI: model folders come from its folder_paths (and extra_model_paths.yaml)
    import folder_paths  # type: ignore
except ImportError:  # standalone (headless runner, tests): core.paths uses ./models or $FACESMITH_MODELS
    folder_paths = None
if folder_paths is not None:
    paths.register_comfy_folders(folder_paths)

PIPELINE_TYPE = "FACESMITH_PIPELINE"
DEFAULT_BASE_MODEL = "diffusers/synthface-base"


class FaceSmithLoadBaseModel:
    DISPLAY_NAME = "Load Base Model (FaceSmith)"
    CATEGORY = "FaceSmith/Base"
    DESCRIPTION = (
        "Loads a frozen Stable Diffusion 1.5 or SDXL base pipeline, offline, for every FaceSmith node. "
        "'diffusers/...' entries are diffusers folders (models/diffusers/<name>/model_index.json); "
        "'checkpoints/...' entries are single-file .safetensors checkpoints, which also need a diffusers config "
        "folder on disk (models/configs/<checkpoint name>/, models/configs/sd15|sdxl/, or a folder named like the "
        "checkpoint beside it). Built-in SynthFace models from the pack's assets are listed after yours."
    )
    RETURN_TYPES = (PIPELINE_TYPE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The loaded base pipeline with its arch, device, dtype and fingerprint.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        models = list_base_models()
        if DEFAULT_BASE_MODEL not in models:  # not built yet: keep shipped workflows valid, loading says what to do
            models.append(DEFAULT_BASE_MODEL)
        return {
            "required": {
                "model": (models, {
                    "default": DEFAULT_BASE_MODEL,
                    "tooltip": "Base model: 'diffusers/<folder>' (a diffusers pipeline folder) or 'checkpoints/<file>' "
                               "(a single-file .safetensors checkpoint). Yours come first, then the built-in ones.",
                }),
                "arch": (list(ARCH_CHOICES), {
                    "default": "auto",
                    "tooltip": "Model family. 'auto' reads it from model_index.json or the checkpoint's weights; "
                               "'sd15'/'sdxl' must match the model.",
                }),
                "device": (list(DEVICE_CHOICES), {
                    "default": "auto",
                    "tooltip": "Where the model runs. 'auto' picks CUDA, then Apple MPS, then the CPU.",
                }),
                "dtype": (list(DTYPE_CHOICES), {
                    "default": "auto",
                    "tooltip": "Weight precision. 'auto' is fp16 on CUDA and fp32 elsewhere; fp16 on the CPU falls "
                               "back to fp32 with a warning.",
                }),
            }
        }

    @classmethod
    def IS_CHANGED(cls, model, arch=None, device=None, dtype=None):
        """A signature of the model's files (content hash of the small ones, size + time of large ones), so a
        model replaced under the same name is loaded again."""
        try:
            return paths.file_signature(resolve_base_model(model))
        except (FileNotFoundError, ValueError):
            return ""  # the node itself reports the missing model when it runs

    def load(self, model: str, arch: str = "auto", device: str = "auto", dtype: str = "auto"):
        node = self.DISPLAY_NAME
        try:
            path = resolve_base_model(model)
        except (FileNotFoundError, ValueError) as exc:
            hint = " (build the built-in SynthFace models with `facesmith assets --build`)" \
                if model == DEFAULT_BASE_MODEL else ""
            raise input_error(node, "model", f"{exc}{hint}") from exc
        try:
            dev = pick_device(device)
        except (RuntimeError, ValueError) as exc:
            raise input_error(node, "device", exc) from exc
        try:
            dt = pick_dtype(dtype, dev)
        except (RuntimeError, ValueError) as exc:
            raise input_error(node, "dtype", exc) from exc
        try:
            with grad_enabled():  # normal (not inference-mode) weights, so later nodes may train on this base
                pipeline = load_pipeline(path, arch=arch, device=dev, dtype=dt)
        except ArchMismatch as exc:
            raise input_error(node, "arch", exc) from exc
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise input_error(node, "model", f"({model}): {exc}") from exc
        return (pipeline,)


NODE_CLASS_MAPPINGS = {"FaceSmithLoadBaseModel": FaceSmithLoadBaseModel}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
