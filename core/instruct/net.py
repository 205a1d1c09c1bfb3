"""The instruction model's maths (MIGE's multimodal encoder with feature fusion), shared by the diffusers path
(``model.py``), training and any native patch.

Per referenced image:

- semantic feature: the pack's face encoder embedding of the image's face (the identity adapter's encoder, a
  separate recognizer from the evaluation judge), mapped to a ``width`` vector and added to ``n_tokens`` learned
  query tokens;
- detail features: VAE-encoder tokens of the whole image (the last down block and the latent mean, pooled to
  ``grid x grid``), which the query tokens read by cross-attention whose output projection starts at zero (MIGE's
  fusion: at initialisation the image tokens carry only the semantic feature, detail is learned);
- ``depth`` such blocks, then a projection to the text encoder's input width: offsets from the class word ("person"),
  so an untrained model reads ``<image1>`` as "person person person person".

The image's word vectors sit at its placeholder in the instruction and the base's own text encoder (frozen) reads the
interleaved sequence: the multimodal encoder is the text encoder with image tokens in its input, as CLIP-conditioned
bases take textual-inversion vectors. The UNet side (LoRA offsets, extra input channels for the source latents) lives
in ``model.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass
class InstructConfig:
    face_dim: int
    vae_dim: int
    text_dim: int
    grid: int = 8
    n_tokens: int = 4
    width: int = 128
    heads: int = 4
    depth: int = 2
    class_word: str = "person"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    source_channels: int = 4
    image_size: int = 64          # the base's native image size (references and sources are resized to it)

    def to_json(self) -> dict:
        return asdict(self)


class FusionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)  # zero-initialised fusion output: detail enters only as it is learned
        nn.init.zeros_(self.out.bias)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, width))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        k = self.norm_kv(kv)
        a, _ = self.attn(self.norm_q(q), k, k, need_weights=False)
        q = q + self.out(a)
        return q + self.mlp(q)


class InstructNet(nn.Module):
    """(face embeddings (N, face_dim), VAE tokens (N, grid*grid, vae_dim)) -> word-vector offsets
    (N, n_tokens, text_dim)."""

    def __init__(self, cfg: InstructConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.face_in = nn.Linear(cfg.face_dim, w)
        self.queries = nn.Parameter(torch.randn(cfg.n_tokens, w) * 0.02)
        self.vae_in = nn.Linear(cfg.vae_dim, w)
        self.pos = nn.Parameter(torch.zeros(cfg.grid * cfg.grid, w))
        self.blocks = nn.ModuleList(FusionBlock(w, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(w)
        self.proj = nn.Linear(w, cfg.text_dim)
        nn.init.normal_(self.proj.weight, std=1e-3)
        nn.init.zeros_(self.proj.bias)

    def forward(self, face: torch.Tensor, vae_tokens: torch.Tensor) -> torch.Tensor:
        if vae_tokens.shape[1] != self.pos.shape[0]:
            raise ValueError(f"expected {self.pos.shape[0]} VAE tokens per image, got {vae_tokens.shape[1]}")
        q = self.queries[None] + self.face_in(face.float())[:, None]
        kv = self.vae_in(vae_tokens.float()) + self.pos[None]
        for block in self.blocks:
            q = block(q, kv)
        return self.proj(self.norm(q))


def image_vectors(net: InstructNet, class_embedding: torch.Tensor, face: torch.Tensor,
                  vae_tokens: torch.Tensor) -> torch.Tensor:
    """The word vectors of each image: class word + offsets, (N, n_tokens, text_dim)."""
    return class_embedding.to(face.device)[None] + net(face, vae_tokens)
