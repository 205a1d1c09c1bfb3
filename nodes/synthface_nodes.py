"""SynthFace nodes: render a procedural face of a given identity with chosen attributes (offline, deterministic)."""
from __future__ import annotations

from ..core.images import numpy_to_comfy
from ..core.synthface.captions import caption
from ..core.synthface.render import ATTRIBUTES, IDENTITY_COUNT, render
from ..core.synthface.splits import split_of
from .node_errors import input_error

_YES_NO = ["no", "yes"]


def _choices(name: str) -> list[str]:
    values = ATTRIBUTES[name]
    return _YES_NO if all(isinstance(v, bool) for v in values) else [str(v) for v in values]


def _value(name: str, choice: str):
    values = ATTRIBUTES[name]
    if all(isinstance(v, bool) for v in values):
        return choice == "yes"
    return choice


class FaceSmithSynthFace:
    DISPLAY_NAME = "SynthFace Render (FaceSmith)"
    CATEGORY = "FaceSmith/SynthFace"
    DESCRIPTION = (
        "Renders a SynthFace face: a procedural person whose identity (face shape, skin tone, eyes, nose, mouth, hair "
        "style, moles) comes only from 'identity', with hair colour, expression, glasses, hat, beard and background "
        "chosen here. Same inputs give the same pixels. Identities with identity % 20 >= 18 are the held-out ones "
        "the judges and benchmarks are evaluated on. Also outputs the caption the base model understands."
    )
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "caption")
    OUTPUT_TOOLTIPS = ("The rendered face (batch of 1).", "A caption naming every chosen attribute.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        tips = {
            "hair": "Hair colour (also colours the brows and the beard).",
            "expression": "Facial expression (mouth and eyes).",
            "glasses": "Whether the face wears glasses.",
            "hat": "Whether the face wears a hat.",
            "beard": "Whether the face has a beard.",
            "background": "Background colour.",
        }
        req = {
            "identity": ("INT", {
                "default": 0, "min": 0, "max": IDENTITY_COUNT - 1,
                "tooltip": f"Which person (0..{IDENTITY_COUNT - 1}); identity % 20 < 16 train, 16-17 validation, "
                           "18-19 held-out.",
            }),
        }
        for name in ATTRIBUTES:
            req[name] = (_choices(name), {"default": _choices(name)[0], "tooltip": tips[name]})
        req["size"] = ("INT", {"default": 64, "min": 16, "max": 1024, "step": 8,
                               "tooltip": "Image width and height in pixels (the built-in models use 64)."})
        req["view"] = ("INT", {"default": -1, "min": -1, "max": 2 ** 30 - 1,
                               "tooltip": "-1: the canonical upright pose; any other number: a deterministic small "
                                          "change of pose, scale and lighting."})
        return {"required": req}

    def run(self, identity, hair, expression, glasses, hat, beard, background, size, view):
        node = self.DISPLAY_NAME
        given = {"hair": hair, "expression": expression, "glasses": glasses, "hat": hat, "beard": beard,
                 "background": background}
        attrs = {}
        for name, choice in given.items():
            if choice not in _choices(name):
                raise input_error(node, name, f"must be one of {_choices(name)}, got {choice!r}")
            attrs[name] = _value(name, choice)
        if not 0 <= int(identity) < IDENTITY_COUNT:
            raise input_error(node, "identity", f"must be in [0, {IDENTITY_COUNT - 1}], got {identity}")
        if not 16 <= int(size) <= 1024:
            raise input_error(node, "size", f"must be in [16, 1024], got {size}")
        if int(view) < -1:
            raise input_error(node, "view", f"must be -1 (canonical) or >= 0, got {view}")
        img = render(int(identity), attrs, int(size), None if int(view) < 0 else int(view))
        text = caption(attrs)
        return (numpy_to_comfy(img), text)


NODE_CLASS_MAPPINGS = {"FaceSmithSynthFace": FaceSmithSynthFace}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "split_of"]
