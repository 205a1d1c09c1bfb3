"""Image conditioning on the one Generate path: a source image's latents as extra UNet input channels, with
classifier-free guidance on text and on image separately (InstructPix2Pix-style), inside the pipeline's own
sampling loop.

A conditioner (e.g. an instruction edit) enters :func:`channel_conditioning` in its ``applied(pipe)``. While it is
active:

- the UNet's ``conv_in`` takes ``4 + C`` channels: the original weights for the noisy latents, ``extra_weight``
  (zeros by default: an untrained channel changes nothing) for the source latents;
- the UNet's forward concatenates the source latents to its input. Under classifier-free guidance (the pipeline's
  ``[unconditional, conditional]`` batch) it runs three branches -- no image and no text, image without text, image
  and text -- and returns values for which the pipeline's own formula ``u + g (c - u)`` (``g`` = the request's cfg =
  the text guidance ``s_T``) gives ``e(0,0) + s_I (e(I,0) - e(0,0)) + s_T (e(I,T) - e(I,0))``: the two guidance
  scales of instruction-editing models, with no second sampling loop.

Text-side conditionings that act inside the UNet (an identity adapter's attention) ask :func:`text_pass` which of
the three branches runs, so they join the branch with the text only, as the prompt's tokens do.

Everything is restored on exit (``conv_in``, ``forward``), also on error or interrupt.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F


_TEXT_PASS: ContextVar[Optional[bool]] = ContextVar("facesmith_text_pass", default=None)


def text_pass() -> Optional[bool]:
    """Inside an edit's guided UNet call: True while the branch with the text runs, False in the branches without
    it (no source and no text; source only). None elsewhere: the batch's rows say which are conditional."""
    return _TEXT_PASS.get()


@contextlib.contextmanager
def _branch(with_text: bool) -> Iterator[None]:
    token = _TEXT_PASS.set(with_text)
    try:
        yield
    finally:
        _TEXT_PASS.reset(token)


@dataclass
class SourceLatents:
    latents: torch.Tensor                       # (1 or B, C, h, w) scaled latents of the source image(s)
    image_guidance: float = 1.5                 # s_I
    extra_weight: Optional[torch.Tensor] = None  # (conv_in out channels, C, k, k); None = zeros

    def __post_init__(self):
        if self.latents.dim() != 4:
            raise ValueError(f"source latents must be (B, C, h, w), got {tuple(self.latents.shape)}")


def dual_guidance(e00: torch.Tensor, ei0: torch.Tensor, eit: torch.Tensor, image_scale: float,
                  text_scale: float) -> torch.Tensor:
    """``e(0,0) + s_I (e(I,0) - e(0,0)) + s_T (e(I,T) - e(I,0))``."""
    return e00 + image_scale * (ei0 - e00) + text_scale * (eit - ei0)


class ExtraChannelsConv(torch.nn.Module):
    """``conv_in`` with ``C`` more input channels: ``base(x[:, :n]) + conv(x[:, n:], extra)``. The base layer is
    used as it is (never copied), ``extra`` may be a trainable parameter (instruction-model training) or a tensor."""

    def __init__(self, base: torch.nn.Conv2d, extra: torch.Tensor):
        super().__init__()
        self.base = base
        self.extra = extra
        self.in_channels = base.in_channels + int(extra.shape[1])
        self.out_channels = base.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.base.in_channels
        w = self.extra.to(x.device, x.dtype)
        return self.base(x[:, :n]) + F.conv2d(x[:, n:], w, None, self.base.stride, self.base.padding,
                                              self.base.dilation)


def check_extra_weight(conv: torch.nn.Conv2d, extra: torch.Tensor, channels: int) -> None:
    want = (conv.out_channels, channels, *conv.kernel_size)
    if tuple(extra.shape) != want:
        raise ValueError(f"extra input weights of shape {tuple(extra.shape)} do not fit conv_in {want}")


@contextlib.contextmanager
def extra_input_channels(unet, extra: torch.Tensor) -> Iterator[ExtraChannelsConv]:
    """``unet.conv_in`` takes ``extra.shape[1]`` more channels while the block runs (restored on exit)."""
    conv = unet.conv_in
    if isinstance(conv, ExtraChannelsConv):
        raise ValueError("the UNet already has extra input channels; one source image per generation")
    check_extra_weight(conv, extra, int(extra.shape[1]))
    unet.conv_in = ExtraChannelsConv(conv, extra)
    try:
        yield unet.conv_in
    finally:
        unet.conv_in = conv


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    raise ValueError(f"source latents for {t.shape[0]} images, but the batch has {n}")


@contextlib.contextmanager
def channel_conditioning(unet, source: SourceLatents, pipe=None) -> Iterator[None]:
    """Patch ``unet`` (see the module doc); ``pipe`` (the diffusers pipeline) tells whether the current call runs
    classifier-free guidance and at which scale (``do_classifier_free_guidance``, ``guidance_scale``)."""
    if hasattr(unet, "_facesmith_channel_conditioning"):
        raise ValueError("the UNet already has image conditioning applied; one source image per generation")
    conv = unet.conv_in
    c = int(source.latents.shape[1])
    extra = source.extra_weight if source.extra_weight is not None else \
        torch.zeros(conv.out_channels, c, *conv.kernel_size)
    check_extra_weight(conv, extra, c)
    original_forward = unet.forward  # the bound method of the class
    src = source.latents

    def forward(sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        s = src.to(sample.device, sample.dtype)
        n = sample.shape[0]
        cfg = bool(getattr(pipe, "do_classifier_free_guidance", False)) and n % 2 == 0
        if not cfg:
            return original_forward(torch.cat([sample, _rows(s, n)], 1), timestep, encoder_hidden_states, *args,
                                    **kwargs)
        h = n // 2
        x, e_u, e_c = sample[:h], encoder_hidden_states[:h], encoder_hidden_states[h:]
        t = timestep[:h] if torch.is_tensor(timestep) and timestep.dim() > 0 and timestep.shape[0] == n \
            else timestep
        zeros = torch.zeros_like(_rows(s, h))
        kwargs_h = dict(kwargs, return_dict=False)
        with _branch(False):
            e00 = original_forward(torch.cat([x, zeros], 1), t, e_u, *args, **kwargs_h)[0]
            ei0 = original_forward(torch.cat([x, _rows(s, h)], 1), t, e_u, *args, **kwargs_h)[0]
        with _branch(True):
            eit = original_forward(torch.cat([x, _rows(s, h)], 1), t, e_c, *args, **kwargs_h)[0]
        g = float(getattr(pipe, "guidance_scale", 1.0))
        want = dual_guidance(e00, ei0, eit, float(source.image_guidance), g)
        out = torch.cat([e00, e00 + (want - e00) / g])  # the pipeline's u + g (c - u) gives ``want``
        if kwargs.get("return_dict", True):
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    with extra_input_channels(unet, extra):
        unet.forward = forward
        unet._facesmith_channel_conditioning = True
        try:
            yield
        finally:
            del unet.forward  # back to the class's method
            del unet._facesmith_channel_conditioning
