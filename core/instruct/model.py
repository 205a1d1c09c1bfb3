"""The instruction model on the diffusers side: its file, image features, and the conditioner for ``generate``.

``InstructModel`` = the fusion network (``net.py``) + its face encoder (stored in the same file, as identity
adapters do) + a LoRA on the UNet (attention, feed-forward and ResNet convolutions; peft for training, fused offsets
for inference) + the weights of the extra input channels that read an edit's source latents
(``core/image_conditioning.py``) + the base it was trained for.

``InstructionConditioner`` puts one instruction into the one Generate path: image word vectors at the placeholders,
the fused LoRA, and -- for an edit -- the source latents as extra UNet channels with separate text and image
guidance. Everything is restored on exit.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..concept.concept import BaseMismatch, base_mismatch_text, pipeline_identity
from ..concept.lora import FusedLora, LoraWeights, lora_from_tensors, lora_tensors
from ..concept.tokens import expand_prompt, swapped_embedding, tokenizer_with, vector_tokens
from ..formats import info_of, save_safetensors, weights_digest
from ..models import native_size
from ..vae_tokens import vae_tokens
from .instruction import MAX_IMAGES, Instruction, image_token
from .net import InstructConfig, InstructNet, image_vectors

log = logging.getLogger("facesmith")

FORMAT = "facesmith.instruct.v1"
TASKS = ("subject_generation", "instruction_edit", "subject_edit")
# UNet layers the LoRA adapts: attention projections, feed-forward, transformer in/out, ResNet convolutions
LORA_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1",
                 "conv2")


def lora_targets(unet) -> list[str]:
    out = []
    for name, module in unet.named_modules():
        if ".base_layer" in name or ".lora_" in name:
            continue
        if name.endswith(tuple("." + s for s in LORA_SUFFIXES)) and isinstance(module, (torch.nn.Linear,
                                                                                       torch.nn.Conv2d)):
            out.append(name)
    return out


def to_unit_bchw(images) -> torch.Tensor:
    """Images as (N, 3, H, W) float in [0, 1]: from ComfyUI (N, H, W, 3) floats, uint8 arrays (N, H, W, 3) or
    (H, W, 3), or (N, 3, H, W) floats."""
    x = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(np.asarray(images)))
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images, got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:  # RGBA: drop alpha
        x = x[:, :3]
    return x.clamp(0, 1).contiguous()


def square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop to a square, resize to ``size`` (the reference-image policy)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top:top + s, left:left + s]
    return F.interpolate(x, size=(size, size), mode="area" if s > size else "bilinear", align_corners=None
                         if s > size else False)


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the whole image to ``size x size`` (the source-image policy; the result is resized back)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def reference_images(images, size: int) -> torch.Tensor:
    """Referenced images as model-format (N, 3, size, size) in [-1, 1] (centre square, resized)."""
    return square(to_unit_bchw(images), size) * 2 - 1


@dataclass
class InstructModel:
    net: InstructNet
    face_encoder: object                 # FaceEncoder
    class_embedding: torch.Tensor        # (n_tokens, text_dim)
    lora: LoraWeights
    source_weight: torch.Tensor          # (conv_in out, source_channels, k, k)
    base_name: str
    base_fingerprint: str
    info: dict = field(default_factory=dict)

    @property
    def cfg(self) -> InstructConfig:
        return self.net.cfg

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.info.get("tasks", TASKS))

    @property
    def model_id(self) -> str:
        return weights_digest(FORMAT, self.state_tensors())

    def __repr__(self) -> str:
        return (f"InstructModel(base={self.base_name}:{self.base_fingerprint}, tasks={','.join(self.tasks)}, "
                f"{self.cfg.n_tokens} tokens per image, steps={self.info.get('steps')})")

    def check_base(self, pipe, what: str = "the instruction model") -> None:
        name, fp = pipeline_identity(pipe)
        if fp != self.base_fingerprint:
            raise BaseMismatch(base_mismatch_text(what, self.base_name, self.base_fingerprint, name, fp))

    @torch.no_grad()
    def vectors(self, pipe, images) -> torch.Tensor:
        """Word vectors (N, n_tokens, text_dim) of N referenced images (any layout ``to_unit_bchw`` takes)."""
        dp = getattr(pipe, "pipe", pipe)
        size = native_size(dp)
        x = reference_images(images, size)
        return self.vectors_from(x, vae_tokens(dp, x, self.cfg.grid)[0])

    @torch.no_grad()
    def vectors_from(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Word vectors from model-format images ``x`` (their faces) and their VAE tokens (any VAE front end)."""
        from ..identity.adapter import synthface_crops

        self.net.eval()
        face = self.face_encoder.embed_aligned(synthface_crops(x))
        return image_vectors(self.net, self.class_embedding, face, tokens).float().cpu()

    # ------------------------------------------------------------------------------------------------- files

    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        t.update(self.face_encoder.embedded_tensors())
        t.update(lora_tensors(self.lora))
        t["class_embedding"] = self.class_embedding
        t["source_weight"] = self.source_weight
        return t

    def metadata(self) -> dict:
        return {"format": FORMAT, "method": "instruct", "base_name": self.base_name,
                "base_fingerprint": self.base_fingerprint, "config": json.dumps(self.cfg.to_json()),
                **self.face_encoder.embedded_metadata(), "tasks": ",".join(self.tasks),
                "info": json.dumps(self.info, sort_keys=True)}

    def save(self, path, overwrite: bool = False, dtype: torch.dtype = torch.float32) -> Path:
        """``dtype`` float16 halves a shipped file (loading computes in float32 either way)."""
        return save_safetensors(path, {k: v.detach().to("cpu", dtype).contiguous() for k, v in
                                       self.state_tensors().items()}, self.metadata(), overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "InstructModel":
        from ..formats import load_safetensors
        from ..identity.face_encoder import FaceEncoder
        from ..weights_check import check_finite

        path = Path(path)
        tensors, meta = load_safetensors(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a FaceSmith instruction model (format {meta.get('format')!r}, expected "
                             f"{FORMAT!r})")
        try:
            cfg = InstructConfig(**json.loads(meta["config"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable instruction-model metadata ({exc})") from None
        check_finite(path, tensors)
        net = InstructNet(cfg)
        net.load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("net.")})
        fe = FaceEncoder.from_embedded(tensors, meta, path)
        return cls(net=net.eval(), face_encoder=fe, class_embedding=tensors["class_embedding"].float(),
                   lora=lora_from_tensors(tensors), source_weight=tensors["source_weight"].float(),
                   base_name=meta.get("base_name", "?"), base_fingerprint=meta.get("base_fingerprint", "?"),
                   info=info_of(meta))


def new_model(pipe, face_encoder, seed: int = 0, **cfg_kw) -> InstructModel:
    """An untrained instruction model for ``pipe`` (training starts here): no LoRA offset, zero source weights."""
    from ..concept.tokens import class_embedding

    dp = getattr(pipe, "pipe", pipe)
    size = native_size(dp)
    grid = int(cfg_kw.get("grid", InstructConfig.grid))
    probe, _ = vae_tokens(dp, torch.zeros(1, 3, size, size), grid)
    cfg = InstructConfig(face_dim=face_encoder.dim, vae_dim=int(probe.shape[-1]),
                         text_dim=int(dp.text_encoder.get_input_embeddings().weight.shape[1]), image_size=size,
                         **cfg_kw)
    torch.manual_seed(seed)
    net = InstructNet(cfg)
    conv = dp.unet.conv_in
    name, fp = pipeline_identity(pipe)
    return InstructModel(net=net, face_encoder=face_encoder,
                         class_embedding=class_embedding(dp.tokenizer, dp.text_encoder, cfg.class_word, cfg.n_tokens),
                         lora={}, source_weight=torch.zeros(conv.out_channels, cfg.source_channels, *conv.kernel_size),
                         base_name=name, base_fingerprint=fp, info={"method": "instruct", "steps": 0})


def token_words(n_images: int, n_tokens: int) -> list[str]:
    """The words of image 1..n_images, ``n_tokens`` each, in the order their vectors are stacked."""
    return [w for i in range(1, n_images + 1) for w in vector_tokens(image_token(i), n_tokens)]


def expanded_prompt(prompt: str, n_images: int, n_tokens: int) -> str:
    """``prompt`` (with ``<fs-imageN>`` words) with each image word expanded to its ``n_tokens`` words."""
    for i in range(1, n_images + 1):
        prompt = expand_prompt(prompt, image_token(i), n_tokens)
    return prompt


@torch.no_grad()
def source_latents(pipe, image) -> torch.Tensor:
    """Scaled latent mean (1, 4, h, w) of the source image, resized as a whole to the model's native size."""
    from ..concept.diffusion import scaling_factor

    dp = getattr(pipe, "pipe", pipe)
    size = native_size(dp)
    x = resized(to_unit_bchw(image)[:1], size) * 2 - 1
    vae = dp.vae
    mean = vae.encode(x.to(next(vae.parameters()).device, next(vae.parameters()).dtype)).latent_dist.mean
    return mean.float().cpu() * scaling_factor(vae)


class InstructionConditioner:
    """One instruction in ``generate``. ``images``: image number -> image (the ``<imageN>`` of the instruction);
    ``source``: the image to edit (None = generate); ``image_guidance``: s_I (the request's cfg is the text
    guidance); ``weight`` scales the LoRA offsets (1 = as trained)."""

    def __init__(self, model: InstructModel, instruction: Instruction, images: dict, pipe, source=None,
                 image_guidance: float = 1.5, weight: float = 1.0):
        missing = [n for n in instruction.images if n not in images]
        if missing:
            raise ValueError(f"the instruction names <image{missing[0]}> but no image{missing[0]} was given")
        model.check_base(pipe)
        self.model, self.instruction = model, instruction
        self.n_images = max(instruction.images)
        if self.n_images > MAX_IMAGES:
            raise ValueError(f"at most {MAX_IMAGES} images, got <image{self.n_images}>")
        k, dim = model.cfg.n_tokens, model.class_embedding.shape[-1]
        rows = []
        for i in range(1, self.n_images + 1):  # unnamed numbers below the highest get the class word
            rows.append(model.vectors(pipe, images[i])[0] if i in images else model.class_embedding.clone())
        self.vectors = torch.cat(rows).reshape(self.n_images * k, dim)
        self.source = None if source is None else source_latents(pipe, source)
        self.image_guidance, self.weight = float(image_guidance), float(weight)
        self._fused = FusedLora(model.lora, model.cfg.lora_alpha / model.cfg.lora_rank * self.weight)

    def rewrite_prompt(self, prompt: str) -> str:
        return expanded_prompt(prompt, self.n_images, self.model.cfg.n_tokens)

    @contextlib.contextmanager
    def applied(self, pipe) -> Iterator[None]:
        from ..image_conditioning import SourceLatents, channel_conditioning

        self.model.check_base(pipe)
        dp = getattr(pipe, "pipe", pipe)
        original_tok = dp.tokenizer
        tok, start = tokenizer_with(original_tok, token_words(self.n_images, self.model.cfg.n_tokens))
        te = dp.text_encoder
        with contextlib.ExitStack() as stack:
            dp.tokenizer = tok
            stack.callback(setattr, dp, "tokenizer", original_tok)
            stack.enter_context(swapped_embedding(te, start, self.vectors.to(te.device, te.dtype)))
            if self.model.lora and self.weight != 0:
                stack.enter_context(self._fused.applied(dp.unet))
            if self.source is not None:
                stack.enter_context(channel_conditioning(
                    dp.unet, SourceLatents(self.source, self.image_guidance, self.model.source_weight * self.weight),
                    pipe=dp))
            yield


def with_tokens_after_image1(prompt: str, tokens) -> str:
    """``prompt`` (``Instruction.prompt``) with each token of other conditionings applied with the instruction (an
    identity's, a concept's) that it does not write right after ``<image1>``'s word: the person the token is meant to
    be. One rule for Instruct Generate/Edit and the native Apply Instruction to Model."""
    from ..concept.tokens import with_words

    for token in tokens:
        if token and token.lower() not in prompt.lower() and image_token(1) in prompt:
            prompt = with_words(prompt, token, image_token(1))
    return prompt


def identity_missing(model: InstructModel, conditioners: Sequence = (), source=None) -> Optional[str]:
    """A warning when ``model`` was trained with an identity adapter's identity of image1 applied
    (``train instruct --identity-adapter``) and a subject generation runs without that adapter's identity among
    ``conditioners``: such a model keeps much less of the person alone (instruct README). None otherwise."""
    want = model.info.get("trained_with_identity")
    if not want or source is not None:
        return None
    if any(getattr(getattr(c, "adapter", None), "adapter_id", None) == want.get("adapter_id") for c in conditioners):
        return None
    return (f"this instruction model was trained with the identity of <image1> from identity adapter "
            f"{want.get('adapter_id')} applied (weight {want.get('weight')}); apply that adapter's identity of image1 "
            "(Apply Identity into 'concepts'), or the generated person will look much less like image1")


def instruct_images(pipe, model: InstructModel, instruction: Instruction, images: dict, source=None,
                    image_guidance: float = 1.5, text_guidance: float = 3.0, steps: int = 20, seed: int = 0,
                    batch_size: int = 1, scheduler: str = "dpmpp_2m", weight: float = 1.0, progress=None,
                    size_of: Optional[Sequence[int]] = None, conditioners: Sequence = ()) -> torch.Tensor:
    """Generate (no ``source``) or edit (``source``) by ``instruction``; ComfyUI IMAGE (B, H, W, 3). An edit's result
    is resized back to the source's (H, W) so its pixels line up with the source. ``conditioners``: other FaceSmith
    conditionings applied together with the instruction (e.g. an identity from the identity adapter); the token of
    one that has a token and is not written in the instruction goes right after ``<image1>``, the person it is
    meant to be (see the instruct README: it raises subject generation's identity)."""
    from ..generate import GenerateRequest, generate

    cond = InstructionConditioner(model, instruction, images, pipe, source, image_guidance, weight)
    warning = identity_missing(model, conditioners, source)
    if warning:
        log.warning("Instruct Generate: %s", warning)
    prompt = with_tokens_after_image1(instruction.prompt, [getattr(c, "token", None) for c in conditioners])
    req = GenerateRequest(prompt=prompt, seed=seed, steps=steps, cfg=text_guidance,
                          batch_size=batch_size, scheduler=scheduler)
    out = generate(pipe, req, [cond, *conditioners], progress)
    if source is not None:
        h, w = to_unit_bchw(source).shape[-2:]
        if tuple(out.shape[1:3]) != (h, w):
            out = F.interpolate(out.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
    return out
