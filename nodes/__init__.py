"""ComfyUI node classes: thin adapters from ComfyUI types to the engine in ``core/``, one module per capability."""
from __future__ import annotations

import logging
from importlib import import_module

log = logging.getLogger("facesmith")

# One module per capability; each exports NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS.
_MODULES = [
    "loaders",
    "generate",
    "synthface_nodes",
    "judge_nodes",
    "concept_nodes",
    "identity_nodes",
    "identity_adapter_nodes",
    "native_models",
    "native_concept",
    "native_identity",
    "native_instruct",
    "understand_nodes",
    "instruct_nodes",
]

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

# A capability whose module fails to import is logged and skipped, so the rest of the pack still loads in ComfyUI;
# tests assert that every module listed here imports (tests/test_pack.py).
LOAD_ERRORS: dict = {}

for _name in _MODULES:
    try:
        _mod = import_module(f".{_name}", __name__)
    except ImportError as exc:  # pragma: no cover - reported by tests
        LOAD_ERRORS[_name] = exc
        log.error("FaceSmith: node module %r failed to import: %s", _name, exc)
        continue
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
