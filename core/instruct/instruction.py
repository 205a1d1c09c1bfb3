"""Multimodal instructions: text with ``<imageN>`` placeholders plus the images they name.

``"give <image1> the glasses of <image2>"`` with two images. Every placeholder must have an image and every image a
placeholder (checked before any model runs, so a graph fails at queue time with the input named). Inside the model
each placeholder becomes ``n_tokens`` word vectors computed from that image (``net.py``); here it becomes the made-up
word ``<fs-imageN>`` that those vectors are bound to.

Size policy (stated to users): reference images are centre-cropped to a square and resized to the model's native
size (their content matters, not their framing); the SOURCE image of an edit is resized as a whole to the native
size and the result is resized back to the source's own width and height, so every pixel of the result lines up
with the source (no crop, no shift, no zoom).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_IMAGES = 4
PLACEHOLDER = re.compile(r"<image(\d+)>", re.IGNORECASE)


class InstructionError(ValueError):
    """A bad instruction; ``field`` is the input to name (``instruction``, ``image2`` ...)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def image_token(n: int) -> str:
    """The made-up word for ``<imageN>`` (lowercase, one CLIP token once added to the tokenizer)."""
    return f"<fs-image{int(n)}>"


@dataclass(frozen=True)
class Instruction:
    text: str                  # as the user wrote it
    images: tuple[int, ...]    # the image numbers it names, in order of first mention (1-based)

    @property
    def prompt(self) -> str:
        """The text with every ``<imageN>`` replaced by its word (``image_token``)."""
        return PLACEHOLDER.sub(lambda m: image_token(int(m.group(1))), self.text)


def placeholders(text: str) -> list[int]:
    """The image numbers named in ``text``, in order of first mention."""
    seen: list[int] = []
    for m in PLACEHOLDER.finditer(text or ""):
        n = int(m.group(1))
        if n not in seen:
            seen.append(n)
    return seen


def parse(text: str, connected: "list[int] | tuple[int, ...]") -> Instruction:
    """Check ``text`` against the connected image numbers (``connected``: e.g. ``[1, 2]`` for image1 and image2)."""
    if not isinstance(text, str) or not text.strip():
        raise InstructionError("instruction", "is empty; write what to do, e.g. 'make <image1> smiling'")
    named = placeholders(text)
    connected = sorted(int(n) for n in connected)
    for n in named:
        if not 1 <= n <= MAX_IMAGES:
            raise InstructionError("instruction", f"names <image{n}>, but at most {MAX_IMAGES} images are supported "
                                                  f"(<image1> .. <image{MAX_IMAGES}>)")
    if len(connected) > MAX_IMAGES:
        raise InstructionError("images", f"{len(connected)} images given; at most {MAX_IMAGES} are supported")
    for n in named:
        if n not in connected:
            raise InstructionError(f"image{n}", f"the instruction names <image{n}> but no image{n} is connected")
    for n in connected:
        if n not in named:
            raise InstructionError(f"image{n}", f"image{n} is connected but the instruction never names <image{n}>; "
                                               f"write <image{n}> where it belongs or disconnect it")
    if not named:
        raise InstructionError("instruction", "names no image; refer to the images as <image1>, <image2> ...")
    return Instruction(text=text.strip(), images=tuple(named))
