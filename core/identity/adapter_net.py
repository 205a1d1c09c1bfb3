"""The identity adapter's network and its inference maths (IDAdapter, Cui et al. 2024, at SynthFace scale).

One module holds the maths that every caller shares: the diffusers conditioner (``adapter.py``), the trainer
(``trainers/identity_adapter.py``) and a native ComfyUI attention patch all call :func:`ip_attention` and
:meth:`IdentityAdapterNet.forward`, so they cannot drift.

Inputs per reference (a face crop, ArcFace-aligned, 112 px): its face-recognition embedding (the adapter's own face
encoder, ``face_encoder.py``) and patch features of the crop from the frozen base's VAE encoder (the stand-in for the
paper's CLIP patch features: no CLIP vision model exists offline; the last VAE down block and the latent mean, pooled
to ``patch_pool x patch_pool`` tokens).

Mixed features: N references of one person enter together. Their face features are averaged (masked, so a batch may
mix 1..N references) and mapped to ``n_id`` word vectors (offsets from the class word, like E4T) for the identity
token; ``n_ctx`` learned queries attend over every reference's face token and patch tokens (a one-layer resampler)
and give the extra context tokens that the decoupled cross-attention reads. Trained on several renders of one
identity whose hair, glasses, hat, expression and background differ, the adapter keeps what they share: identity.

Decoupled cross-attention (as IP-Adapter / IDAdapter): every UNet cross-attention layer gets its own key/value
projections of the context tokens (initialised from the layer's text key/value weights); its output is
``attn(q, k_text, v_text) + scale * attn(q, k_ip, v_ip)`` before the layer's output projection.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class AdapterConfig:
    face_dim: int                  # face encoder embedding width
    patch_dim: int                 # channels of a patch token (VAE block + latent)
    text_dim: int                  # text encoder input width (word vectors)
    cross_dim: int                 # UNet cross-attention width (context tokens)
    layers: list                   # UNet cross-attention module paths, in order
    inner_dims: list               # their query/key/value widths
    n_id: int = 4                  # word vectors of the identity token
    n_ctx: int = 4                 # context tokens for the decoupled attention
    hidden: int = 256
    heads: int = 4
    patch_pool: int = 4
    class_word: str = "person"

    def to_json(self) -> dict:
        return asdict(self)


def cross_attention_layers(unet) -> list[tuple[str, nn.Module]]:
    """(path, Attention) of every cross-attention layer of a diffusers UNet (``attn2`` of transformer blocks)."""
    return [(name, m) for name, m in unet.named_modules() if name.endswith("attn2") and hasattr(m, "to_k")]


class Resampler(nn.Module):
    """``n_ctx`` learned queries -> one attention over the references' tokens -> feed-forward -> layer norm."""

    def __init__(self, dim: int, n_queries: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * dim ** -0.5)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        q = self.queries[None].expand(tokens.shape[0], -1, -1)
        h, _ = self.attn(q, self.norm_kv(tokens), self.norm_kv(tokens), key_padding_mask=padding, need_weights=False)
        h = q + h
        h = h + self.ff(self.norm_ff(h))
        return self.norm_out(h)


class IdentityAdapterNet(nn.Module):
    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.cfg = cfg
        c, hid = cfg.cross_dim, cfg.hidden
        self.face_mlp = nn.Sequential(nn.Linear(cfg.face_dim, hid), nn.SiLU(), nn.Linear(hid, hid), nn.SiLU())
        self.id_head = nn.Linear(hid, cfg.n_id * cfg.text_dim)
        with torch.no_grad():
            self.id_head.weight.mul_(0.1)
            self.id_head.bias.zero_()
        self.face_token = nn.Linear(hid, c)
        self.patch_norm = nn.LayerNorm(cfg.patch_dim)
        self.patch_proj = nn.Linear(cfg.patch_dim, c)
        self.patch_pos = nn.Parameter(torch.zeros(cfg.patch_pool * cfg.patch_pool, c))
        self.resampler = Resampler(c, cfg.n_ctx, cfg.heads)
        self.to_k_ip = nn.ModuleList(nn.Linear(c, d, bias=False) for d in cfg.inner_dims)
        self.to_v_ip = nn.ModuleList(nn.Linear(c, d, bias=False) for d in cfg.inner_dims)

    @torch.no_grad()
    def init_kv_from(self, unet) -> None:
        """Start the decoupled key/value projections from the layers' text key/value weights (IP-Adapter's init)."""
        layers = cross_attention_layers(unet)
        if [p for p, _ in layers] != list(self.cfg.layers):
            raise ValueError("the UNet's cross-attention layers differ from the adapter's")
        for (_, attn), k, v in zip(layers, self.to_k_ip, self.to_v_ip):
            k.weight.copy_(attn.to_k.weight.float())
            v.weight.copy_(attn.to_v.weight.float())

    def forward(self, face: torch.Tensor, patches: torch.Tensor, ref_mask: torch.Tensor | None = None):
        """``face`` (B, N, face_dim), ``patches`` (B, N, T, patch_dim), ``ref_mask`` (B, N) bool (True = a reference;
        None = all) -> (word-vector offsets (B, n_id, text_dim), context tokens (B, n_ctx, cross_dim))."""
        b, n = face.shape[:2]
        if ref_mask is None:
            ref_mask = torch.ones(b, n, dtype=torch.bool, device=face.device)
        w = ref_mask.float()
        h = self.face_mlp(face.float())                                       # (B, N, hid)
        mixed = (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        offsets = self.id_head(mixed).view(b, self.cfg.n_id, self.cfg.text_dim)
        ft = self.face_token(h)[:, :, None]                                   # (B, N, 1, C)
        pt = self.patch_proj(self.patch_norm(patches.float())) + self.patch_pos                # (B, N, T, C)
        tokens = torch.cat([ft, pt], dim=2)                                   # (B, N, 1+T, C)
        per_ref = tokens.shape[2]
        padding = (~ref_mask)[:, :, None].expand(b, n, per_ref).reshape(b, n * per_ref)
        ctx = self.resampler(tokens.reshape(b, n * per_ref, -1), padding)
        return offsets, ctx

    def ip_kv(self, layer: int, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_k_ip[layer](ctx), self.to_v_ip[layer](ctx)


def ip_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of ``query`` (B, L, D) over context ``key``/``value`` (B, n, D) -> (B, L, D): the
    decoupled branch, before the layer's output projection."""
    b, L, d = query.shape
    hd = d // heads
    q = query.view(b, L, heads, hd).transpose(1, 2)
    k = key.view(b, -1, heads, hd).transpose(1, 2)
    v = value.view(b, -1, heads, hd).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
    return out.transpose(1, 2).reshape(b, L, d)


def schedule_active(timestep: float, start_at: float, end_at: float, num_train_timesteps: int = 1000) -> bool:
    """Whether the identity acts at ``timestep``: ``start_at``/``end_at`` are fractions of the denoising process
    (0 = pure noise, 1 = the end), read as ``1 - t / T``."""
    frac = 1.0 - float(timestep) / float(num_train_timesteps)
    return start_at - 1e-6 <= frac <= end_at + 1e-6


def region_weights(mask: torch.Tensor | None, length: int, latent_hw: tuple[int, int]) -> torch.Tensor | None:
    """A (H, W) mask in [0, 1] (image space) as per-query weights (1, ``length``, 1) for a layer whose queries are the
    latent grid downsampled by a power of two; None when there is no mask."""
    if mask is None:
        return None
    h0, w0 = latent_hw
    f = 1
    while (h0 // f) * (w0 // f) > length and f < 64:
        f *= 2
    h, w = max(1, h0 // f), max(1, w0 // f)
    if h * w != length:
        raise ValueError(f"cannot place the identity mask on an attention layer of {length} queries "
                         f"(latent {h0}x{w0})")
    m = F.interpolate(mask.float()[None, None], size=(h, w), mode="area")
    return m.reshape(1, h * w, 1)
