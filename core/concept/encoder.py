"""The E4T domain encoder (Gal et al. 2023, "Encoder-based Domain Tuning for Fast Personalization").

Features (all from the FROZEN base model; no pretrained CLIP-vision model exists offline, so the paper's CLIP branch
is replaced by the base model's own VAE encoder):

- VAE encoder down-block outputs (by default the second and the last block) and the VAE latent mean;
- UNet encoder features of the noised reference latent (down-block outputs + mid block) at a fixed timestep
  ``t_enc`` with fixed noise and the class prompt ``"a photo of a person"``, as in the paper's UNet branch (the up
  path is skipped).

Trainable head: per feature map a per-channel standardisation (statistics measured on the training pool), a 1x1
convolution, SiLU and adaptive average pooling to ``pool x pool``; the concatenation goes through an MLP to
``n_vectors x dim``: the offset added to the class word's embedding (``e = e_class + offset``). The domain LoRA
(weight offsets on the UNet attention layers) is trained beside it and stored in the same file.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..formats import info_of, save_safetensors
from ..models import native_size
from .concept import BaseMismatch, base_mismatch_text, pipeline_identity
from .lora import LoraWeights, lora_from_tensors, lora_tensors
from .tokens import CLASS_WORD, class_embedding

log = logging.getLogger("facesmith")

FORMAT = "facesmith.e4t_domain_encoder.v1"


@dataclass
class EncoderConfig:
    dim: int                                   # text encoder input width
    n_vectors: int = 1
    class_word: str = CLASS_WORD
    vae_blocks: list = field(default_factory=lambda: [1, -1])
    unet_blocks: list = field(default_factory=lambda: [0, 1])
    use_latent: bool = True
    use_mid: bool = True
    t_enc: int = 200                           # timestep of the noised reference latent for the UNet features
    noise_seed: int = 1234
    proj: int = 16
    pool: int = 4
    hidden: int = 256
    feature_channels: list = field(default_factory=list)  # filled by for_pipeline

    @classmethod
    def for_pipeline(cls, dp, **kw) -> "EncoderConfig":
        cfg = cls(dim=int(dp.text_encoder.get_input_embeddings().weight.shape[1]), **kw)
        vae_ch = list(dp.vae.config.block_out_channels)
        unet_ch = list(dp.unet.config.block_out_channels)
        chans = [vae_ch[i] for i in cfg.vae_blocks]
        if cfg.use_latent:
            chans.append(int(dp.vae.config.latent_channels))
        chans += [unet_ch[i] for i in cfg.unet_blocks]
        if cfg.use_mid:
            chans.append(unet_ch[-1])
        cfg.feature_channels = [int(c) for c in chans]
        return cfg


def lora_domain_id(lora: Optional[LoraWeights], rank: int, alpha: float) -> str:
    """16 hex digits of SHA-256 over a LoRA's module paths, float32 tensor bytes, rank and alpha (the same on any
    machine and after a save/load round trip; an absent LoRA hashes as an empty one)."""
    h = hashlib.sha256(f"facesmith.domain_lora.v1|r={int(rank)}|a={float(alpha)!r}".encode())
    for path, (down, up) in sorted((lora or {}).items()):
        h.update(f"|{path}|{tuple(down.shape)}|{tuple(up.shape)}|".encode())
        for t in (down, up):
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()[:16]


class _Stop(Exception):
    pass


def preprocess(images, size: int) -> torch.Tensor:
    """ComfyUI IMAGE (B,H,W,C in [0,1]) / uint8 array(s) / PIL image(s) -> (B,3,size,size) in [-1,1], centre-cropped."""
    from PIL import Image

    from ..images import comfy_to_model, numpy_to_comfy, pil_to_comfy

    if isinstance(images, Image.Image) or (isinstance(images, (list, tuple)) and images
                                          and isinstance(images[0], Image.Image)):
        images = pil_to_comfy(images)
    elif isinstance(images, np.ndarray):
        images = numpy_to_comfy(images)
    x = comfy_to_model(images)
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top:top + s, left:left + s]
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    return x.contiguous()


def class_prompt_ids(tokenizer, class_word: str = CLASS_WORD) -> torch.Tensor:
    return tokenizer([f"a photo of a {class_word}"], padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def extract_features(dp, images: torch.Tensor, cfg: EncoderConfig, batch: int = 64) -> list[torch.Tensor]:
    """Frozen-base features of ``images`` ((B,3,H,W) in [-1,1]) as a list of (B, C_i, h_i, w_i) float32 CPU tensors."""
    from diffusers import DDPMScheduler

    vae, unet, te = dp.vae, dp.unet, dp.text_encoder
    dev, dt = next(unet.parameters()).device, next(unet.parameters()).dtype
    vdt = next(vae.parameters()).dtype
    sched = DDPMScheduler.from_config(dp.scheduler.config)
    cond = te(class_prompt_ids(dp.tokenizer, cfg.class_word).to(te.device))[0].to(dev, dt)
    sf = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    outs: list[list[torch.Tensor]] = []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch].to(dev, vdt)
        got: dict = {}
        hooks = []
        try:
            for j in cfg.vae_blocks:
                hooks.append(vae.encoder.down_blocks[j].register_forward_hook(
                    lambda m, a, o, j=j: got.__setitem__(f"vae{j}", o)))
            mean = vae.encode(x).latent_dist.mean
            for h in hooks:
                h.remove()
            hooks = []
            lat = (mean * sf).to(dt)
            g = torch.Generator("cpu").manual_seed(cfg.noise_seed)
            noise = torch.randn(lat.shape[1:], generator=g).to(dev, dt).expand_as(lat)
            t = torch.full((lat.shape[0],), int(cfg.t_enc), device=dev, dtype=torch.long)
            noisy = sched.add_noise(lat, noise, t)
            for j in cfg.unet_blocks:
                hooks.append(unet.down_blocks[j].register_forward_hook(
                    lambda m, a, o, j=j: got.__setitem__(f"unet{j}", o[0] if isinstance(o, tuple) else o)))

            def mid_hook(m, a, o):
                got["mid"] = o[0] if isinstance(o, tuple) else o
                raise _Stop()

            hooks.append(unet.mid_block.register_forward_hook(mid_hook))
            try:
                unet(noisy, t, encoder_hidden_states=cond.expand(lat.shape[0], -1, -1))
            except _Stop:
                pass
        finally:
            for h in hooks:
                h.remove()
        feats = [got[f"vae{j}"] for j in cfg.vae_blocks]
        if cfg.use_latent:
            feats.append(mean)
        feats += [got[f"unet{j}"] for j in cfg.unet_blocks]
        if cfg.use_mid:
            feats.append(got["mid"])
        outs.append([f.detach().float().cpu() for f in feats])
    return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]


class E4TEncoder(torch.nn.Module):
    """The trainable head: frozen-base features -> word-embedding offset ``(B, n_vectors, dim)``."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if not cfg.feature_channels:
            raise ValueError("EncoderConfig.feature_channels is empty; build it with EncoderConfig.for_pipeline")
        self.cfg = cfg
        self.proj = torch.nn.ModuleList(torch.nn.Conv2d(c, cfg.proj, 1) for c in cfg.feature_channels)
        for k, c in enumerate(cfg.feature_channels):
            self.register_buffer(f"feat_mean_{k}", torch.zeros(c))
            self.register_buffer(f"feat_std_{k}", torch.ones(c))
        n_in = len(cfg.feature_channels) * cfg.proj * cfg.pool * cfg.pool
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(n_in, cfg.hidden), torch.nn.SiLU(),
            torch.nn.Linear(cfg.hidden, cfg.hidden), torch.nn.SiLU(),
            torch.nn.Linear(cfg.hidden, cfg.n_vectors * cfg.dim),
        )
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.1)
            self.mlp[-1].bias.zero_()

    @torch.no_grad()
    def set_feature_stats(self, feats: list[torch.Tensor]) -> None:
        for k, f in enumerate(feats):
            getattr(self, f"feat_mean_{k}").copy_(f.float().mean(dim=(0, 2, 3)))
            getattr(self, f"feat_std_{k}").copy_(f.float().std(dim=(0, 2, 3)).clamp_min(1e-4))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        for k, (f, proj) in enumerate(zip(feats, self.proj)):
            f = f.to(self.mlp[0].weight.dtype)
            mean = getattr(self, f"feat_mean_{k}")[None, :, None, None]
            std = getattr(self, f"feat_std_{k}")[None, :, None, None]
            h = F.silu(proj((f - mean) / std))
            parts.append(F.adaptive_avg_pool2d(h, self.cfg.pool).flatten(1))
        out = self.mlp(torch.cat(parts, dim=1))
        return out.view(-1, self.cfg.n_vectors, self.cfg.dim)


@dataclass
class DomainEncoder:
    """A trained (or untrained) domain encoder + its domain LoRA and what it was made for."""

    encoder: E4TEncoder
    class_embedding: torch.Tensor              # (n_vectors, dim): e_class the offsets are added to
    lora: Optional[LoraWeights]
    lora_rank: int
    lora_alpha: float
    base_name: str
    base_fingerprint: str
    info: dict = field(default_factory=dict)   # method, hyper-parameters, steps, losses, command ...

    @property
    def cfg(self) -> EncoderConfig:
        return self.encoder.cfg

    @property
    def domain_id(self) -> str:
        """A short stable hash of the domain LoRA (tensors, rank, alpha): the identity of the weight offsets that
        every concept made from this encoder shares (``Concept.metadata["domain_id"]``). Computed on each call (about
        half a millisecond for the built-in encoder), so it always matches the current LoRA."""
        return lora_domain_id(self.lora, self.lora_rank, self.lora_alpha)

    def __repr__(self) -> str:
        return (f"DomainEncoder(base={self.base_name}:{self.base_fingerprint}, {self.cfg.n_vectors}x{self.cfg.dim}, "
                f"LoRA r{self.lora_rank}, steps={self.info.get('steps')})")

    def check_base(self, pipe, what: str = "encoder") -> None:
        name, fp = pipeline_identity(pipe)
        if fp != self.base_fingerprint:
            raise BaseMismatch(base_mismatch_text(what, self.base_name, self.base_fingerprint, name, fp))

    @torch.no_grad()
    def predict(self, pipe, images) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings ``(B, n, dim)`` = class + offset, offsets) for reference images (any format ``preprocess``
        takes), on the CPU in float32."""
        self.check_base(pipe)
        dp = getattr(pipe, "pipe", pipe)
        return self.predict_model(dp, preprocess(images, native_size(dp)))

    @torch.no_grad()
    def predict_model(self, dp, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict`` for images already in model format ((B,3,H,W) in [-1,1] at the native size)."""
        feats = extract_features(dp, x, self.cfg)
        self.encoder.eval()
        dev = next(self.encoder.parameters()).device
        offset = self.encoder([f.to(dev) for f in feats]).float().cpu()
        return self.class_embedding[None] + offset, offset

    # --------------------------------------------------------------------------------------------------- files

    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        t["class_embedding"] = self.class_embedding
        t.update(lora_tensors(self.lora))
        return t

    def metadata(self) -> dict:
        return {
            "format": FORMAT, "method": "e4t", "base_name": self.base_name, "base_fingerprint": self.base_fingerprint,
            "encoder_config": json.dumps(asdict(self.cfg)), "lora_rank": str(self.lora_rank),
            "lora_alpha": str(self.lora_alpha), "info": json.dumps(self.info, sort_keys=True),
        }

    def save(self, path, overwrite: bool = False, dtype: torch.dtype = torch.float32) -> Path:
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in self.state_tensors().items()}
        return save_safetensors(path, tensors, self.metadata(), overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "DomainEncoder":
        """Read an encoder file. Its header (format, ``encoder_config`` ranges, every tensor's dtype and shape) is
        checked before anything is allocated and its tensors for NaN/Inf; errors name the file and the key."""
        from .file_checks import check_encoder_file, load_checked

        meta = check_encoder_file(path)
        tensors = load_checked(path)
        cfg = meta["_config"]
        enc = E4TEncoder(cfg)
        enc.load_state_dict({k[len("encoder."):]: v.float() for k, v in tensors.items() if k.startswith("encoder.")})
        enc.eval()
        return cls(encoder=enc, class_embedding=tensors["class_embedding"].float(),
                   lora=lora_from_tensors(tensors) or None, lora_rank=meta["_rank"], lora_alpha=meta["_alpha"],
                   base_name=meta.get("base_name", "?"), base_fingerprint=meta.get("base_fingerprint", "?"),
                   info=info_of(meta))


def untrained(pipe, n_vectors: int = 1, rank: int = 4, seed: int = 0, **cfg_kw) -> DomainEncoder:
    """A randomly initialised encoder with an all-zero LoRA (the 'untrained encoder' control and the training start)."""
    dp = getattr(pipe, "pipe", pipe)
    name, fp = pipeline_identity(pipe)
    cfg = EncoderConfig.for_pipeline(dp, n_vectors=n_vectors, **cfg_kw)
    torch.manual_seed(seed)
    enc = E4TEncoder(cfg)
    return DomainEncoder(encoder=enc, class_embedding=class_embedding(dp.tokenizer, dp.text_encoder, cfg.class_word,
                                                                      n_vectors),
                         lora=None, lora_rank=rank, lora_alpha=float(rank), base_name=name, base_fingerprint=fp,
                         info={"method": "e4t", "steps": 0})
