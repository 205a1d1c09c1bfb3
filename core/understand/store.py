"""Where understanding models live (``<models>/facesmith/understand/``, built-in ones under
``assets/models/facesmith/understand/``) and loading either backend by name."""
from __future__ import annotations

from pathlib import Path

from .. import paths
from .weights import KIND as UNIFIED_KIND
from .weights import SUBFOLDER

BUILTIN_UNIFIED = f"{SUBFOLDER}/synthface-unified-moe.safetensors"


def _of_kind(kind: str) -> list[str]:
    return paths.list_models_tagged("facesmith", "facesmith_kind", kind, f"{SUBFOLDER}/")


def unified_models() -> list[str]:
    return _of_kind(UNIFIED_KIND)


def vlm_loras() -> list[str]:
    from .vlm import KIND

    return _of_kind(KIND)


def load_face_model(backend: str = "unified", model: str = BUILTIN_UNIFIED, vlm_folder: str = "",
                    lora: str | None = None, device: str = "cpu"):
    """An understander: ``backend="unified"`` loads ``model`` (a name under models/facesmith/ or a path);
    ``backend="vlm"`` loads the transformers folder ``vlm_folder`` (offline) with an optional LoRA file."""
    if backend == "unified":
        from .infer import load_understander

        path = Path(model) if Path(model).is_file() else paths.resolve("facesmith", model)
        return load_understander(path, device)
    if backend == "vlm":
        from .vlm import load_vlm_understander

        if not vlm_folder:
            raise ValueError("backend 'vlm' needs a vision-language model folder")
        lora_path = None
        if lora:
            lora_path = Path(lora) if Path(lora).is_file() else paths.resolve("facesmith", lora)
        return load_vlm_understander(vlm_folder, lora_path, device)
    raise ValueError(f"backend must be 'unified' or 'vlm', got {backend!r}")
