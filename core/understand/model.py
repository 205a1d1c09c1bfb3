"""The unified face model: ONE transformer over image tokens and text tokens that answers questions and writes
captions (understanding: text from image) and draws image codes from a caption (generation: image tokens from
text), after UniF2ace's multi-level grouped mixture of experts.

Sequences (one task per row; ``group`` 0 = understanding, 1 = generation):

    <ask>      [16 image tokens] q1 <answer> a1 <eos> q2 <answer> a2 <eos> ...   (multi-turn VQA)
    <describe> [16 image tokens] caption words <eos>                             (captioning)
    <draw>     caption words <answer> [16 image codes]                           (generation)

Image tokens come from a small convolutional patch embedder (64 px -> a 4x4 grid of 16x16 patches; ``stem``: the
original four strided convolutions, or residual blocks at 32 and 16 px before pooling to the grid); the image block
attends both ways, everything else causally. Generation tokens are discrete codes of a k-means patch codebook
(``codebook``: 4x4 grid of 16x16 px patches), decoded by pasting the code's mean patch.

Feed-forward layers are either dense (``FeedForward``) or :class:`GroupedMoE`: a shared expert that every token
uses, plus per task group (understanding / generation) token-level experts (top-1 per token) and sequence-level
experts (top-1 per sequence, routed on the mean of the sequence's CONDITION tokens -- the image block for
understanding, the caption for generation -- so the choice never sees the answer it is trained to predict). Active
per token: shared + one token expert + one sequence expert, so the dense twin with hidden width ``3 * expert_hidden``
has the same active parameters (routers aside: they are counted in ``active_parameters``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

GROUPS = ("understanding", "generation")
STEMS = ("conv4", "residual")
GATES = ("prob", "unit")


@dataclass
class ModelConfig:
    vocab_size: int
    n_codes: int = 256
    code_offset: int = 0
    dim: int = 128
    layers: int = 4
    heads: int = 4
    expert_hidden: int = 128
    moe: bool = True
    token_experts: int = 4
    seq_experts: int = 2
    max_len: int = 112
    grid: int = 4           # image tokens per side (input image 64 px -> 16 px patches)
    image_size: int = 64
    aux_weight: float = 0.01
    probe_classes: tuple = ()  # answers per question type: a linear probe on the image tokens (training signal)
    stem: str = "conv4"     # image stem, one of STEMS (see PatchEmbed); files saved without the field are conv4
    stem_width: int = 32    # stem channels at 32 px (twice that at 16 px); 32 = the conv4 stem of those files
    gate: str = "prob"      # how a routed expert's output is weighted, one of GATES (see GroupedMoE); files saved
                            # without the field are "prob"

    def __post_init__(self):
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def _weight(gate: torch.Tensor, kind: str) -> torch.Tensor:
    """The factor on a routed expert's output. ``prob``: its router probability (Switch Transformer's top-1 gate;
    with 4 experts it starts near 0.25, so a routed expert starts at a quarter of its output and of its gradient).
    ``unit``: 1 in the forward pass, the router still learning from the gradient of log(probability) (a
    straight-through gate), so each routed expert counts as fully as the dense twin's matching third."""
    return gate if kind == "prob" else gate / gate.detach()


def _balance(probs: torch.Tensor, choice: torch.Tensor, n: int) -> torch.Tensor:
    """Switch-style load balance: n * sum_e (share routed to e) * (mean router probability of e)."""
    share = F.one_hot(choice, n).float().mean(0)
    return n * (share * probs.mean(0)).sum()


class GroupedMoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h = cfg.dim, cfg.expert_hidden
        self.shared = FeedForward(d, h)
        self.token_experts = nn.ModuleList(nn.ModuleList(FeedForward(d, h) for _ in range(cfg.token_experts))
                                           for _ in GROUPS)
        self.seq_experts = nn.ModuleList(nn.ModuleList(FeedForward(d, h) for _ in range(cfg.seq_experts))
                                         for _ in GROUPS)
        self.token_router = nn.ModuleList(nn.Linear(d, cfg.token_experts, bias=False) for _ in GROUPS)
        self.seq_router = nn.ModuleList(nn.Linear(d, cfg.seq_experts, bias=False) for _ in GROUPS)
        self.gate = cfg.gate
        self.last_routing: dict = {}

    def forward(self, x, group, cond):
        """``x`` (B, T, D); ``group`` (B,) task group per row; ``cond`` (B, T) bool: the row's condition tokens."""
        out = self.shared(x)
        aux = x.new_zeros(())
        routing = {}
        for g in range(len(GROUPS)):
            rows = (group == g).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            xg = x[rows]
            b, t, d = xg.shape
            # token level: top-1 expert per token
            flat = xg.reshape(b * t, d)
            probs = self.token_router[g](flat).softmax(-1)
            gate, choice = probs.max(-1)
            mixed = torch.zeros_like(flat)
            for e, expert in enumerate(self.token_experts[g]):
                sel = (choice == e).nonzero(as_tuple=True)[0]
                if sel.numel():
                    mixed.index_add_(0, sel, _weight(gate[sel, None], self.gate) * expert(flat[sel]))
            aux = aux + _balance(probs, choice, len(self.token_experts[g]))
            # sequence level: top-1 expert per row, routed on the mean of its condition tokens
            c = cond[rows].unsqueeze(-1).to(xg.dtype)
            pooled = (xg * c).sum(1) / c.sum(1).clamp(min=1)
            sprobs = self.seq_router[g](pooled).softmax(-1)
            sgate, schoice = sprobs.max(-1)
            seq = torch.zeros_like(xg)
            for e, expert in enumerate(self.seq_experts[g]):
                sel = (schoice == e).nonzero(as_tuple=True)[0]
                if sel.numel():
                    seq.index_add_(0, sel, _weight(sgate[sel, None, None], self.gate) * expert(xg[sel]))
            aux = aux + _balance(sprobs, schoice, len(self.seq_experts[g]))
            out = out.index_add(0, rows, mixed.reshape(b, t, d) + seq)
            routing[GROUPS[g]] = {"token": torch.bincount(choice, minlength=len(self.token_experts[g])).tolist(),
                                  "sequence": torch.bincount(schoice, minlength=len(self.seq_experts[g])).tolist()}
        self.last_routing = routing
        return out, aux


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.moe = cfg.moe
        self.ff = GroupedMoE(cfg) if cfg.moe else FeedForward(cfg.dim, 3 * cfg.expert_hidden)

    def forward(self, x, mask, group, cond):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = self.norm2(x)
        if self.moe:
            f, aux = self.ff(h, group, cond)
        else:
            f, aux = self.ff(h), x.new_zeros(())
        return x + f, aux


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions at one resolution, added to their input (pre-activation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class PatchEmbed(nn.Module):
    """64 px RGB in [-1, 1] -> (B, grid*grid, dim) image tokens: a convolutional stem PLUS a linear projection
    of each patch's own pixels (at 1/4 resolution). The linear path gives every token its region's colours from
    the first step, so the transformer starts reading the image at once instead of after a long plateau (measured:
    with the stem alone, a hat question stayed at chance for 150 steps).

    Stems (``ModelConfig.stem``): ``conv4``, four stride-2 convolutions (64 -> 32 -> 16 -> 8 -> 4 px; the first
    shipped models), or ``residual``, the same path with a residual block at 32 px and one at 16 px, where the
    small parts live (eyes ~7 px wide, brows 0.5-1.5 px thick at 64 px). Measured with the image probe alone on
    validation renders: after 500 steps the residual stem (width 48) reads eye shape, mouth and hair style about as
    well as the conv4 stem after 1,500 (brow weight learns slower with both); see
    assets/models/facesmith/understand/README.md."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, w = cfg.dim, cfg.stem_width
        if cfg.stem == "residual":
            self.net = nn.Sequential(
                nn.Conv2d(3, w, 4, 2, 1), ResidualBlock(w), nn.GELU(),
                nn.Conv2d(w, 2 * w, 3, 2, 1), ResidualBlock(2 * w), nn.GELU(),
                nn.Conv2d(2 * w, d, 3, 2, 1), nn.GELU(),
                nn.Conv2d(d, d, 3, 2, 1))
        else:  # conv4: parameter names as in the first shipped files
            self.net = nn.Sequential(
                nn.Conv2d(3, w, 4, 2, 1), nn.GELU(),
                nn.Conv2d(w, 2 * w, 3, 2, 1), nn.GELU(),
                nn.Conv2d(2 * w, d, 3, 2, 1), nn.GELU(),
                nn.Conv2d(d, d, 3, 2, 1))
        self.grid = cfg.grid
        self.raw = nn.Linear(3 * (cfg.image_size // 4 // cfg.grid) ** 2, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        y = self.net(x)
        if y.shape[-1] != self.grid:
            y = F.adaptive_avg_pool2d(y, self.grid)
        small = F.avg_pool2d(x, 4)  # (B, 3, S/4, S/4)
        b, c, s, _ = small.shape
        p = s // self.grid
        raw = small.reshape(b, c, self.grid, p, self.grid, p).permute(0, 2, 4, 1, 3, 5).reshape(b, self.grid ** 2, -1)
        return self.norm(y.flatten(2).transpose(1, 2) + self.raw(raw))


class UnifiedFaceModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
        self.patch = PatchEmbed(cfg)
        self.summary = nn.Linear(cfg.dim * cfg.grid * cfg.grid, cfg.dim)
        # deep supervision of the image tokens: one linear read-out of every question type's answer from the 16
        # tokens, trained beside the language loss, so the image encoder learns at a CNN's pace (used for training
        # only; answers always come from the transformer's words)
        self.probe = nn.Linear(cfg.dim * cfg.grid * cfg.grid, sum(cfg.probe_classes)) if cfg.probe_classes else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        # generation codebook: n_codes mean patches (16x16x3, values in [0, 1]); filled by the trainer (k-means)
        p = cfg.image_size // cfg.grid
        self.register_buffer("codebook", torch.zeros(cfg.n_codes, p * p * 3))

    @property
    def n_image(self) -> int:
        return self.cfg.grid * self.cfg.grid

    def probe_logits(self, images) -> list[torch.Tensor]:
        """Per question type, logits of its answers read linearly from the image tokens."""
        return self.probe(self.patch(images).flatten(1)).split(list(self.cfg.probe_classes), dim=1)

    def forward(self, tokens, images=None, image_at=None, group=None, cond=None, return_patches: bool = False,
                patches=None):
        """``tokens`` (B, T) ids (image positions hold <pad> and are replaced); ``images`` (B', 3, 64, 64) for the
        rows ``image_at`` (B',) whose image block starts at position 1, or their image tokens ``patches``
        (B', n_image, dim; ``self.patch`` of the images, computed once when many rows share an image). Returns
        (logits (B, T, V), aux loss)."""
        b, t = tokens.shape
        x = self.embed(tokens)
        n = self.n_image
        image_mask = torch.zeros(b, t, dtype=torch.bool, device=tokens.device)
        pt = None
        if (images is not None or patches is not None) and len(image_at):
            pt = (self.patch(images) if patches is None else patches).to(x.dtype)
            x = x.clone()
            # every token of an image's row also gets a summary of the whole image (a direct path from the picture
            # to the words; the tokens still read details through attention)
            x[image_at] = x[image_at] + self.summary(pt.flatten(1))[:, None]
            x[image_at, 1:1 + n] = pt
            image_mask[image_at, 1:1 + n] = True
        x = x + self.pos[:t]
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        # the image block (positions 1..n) attends both ways in rows that have one
        allowed = causal.expand(b, t, t).clone()
        both = image_mask[:, :, None] & image_mask[:, None, :]
        allowed |= both
        mask = torch.zeros(b, t, t, dtype=x.dtype, device=tokens.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.cfg.heads, 0)
        if group is None:
            group = torch.zeros(b, dtype=torch.long, device=tokens.device)
        if cond is None:
            cond = image_mask
        aux = x.new_zeros(())
        for blk in self.blocks:
            x, a = blk(x, mask, group, cond)
            aux = aux + a
        logits = self.head(self.norm(x))
        if return_patches:
            return logits, aux / max(1, len(self.blocks)), pt
        return logits, aux / max(1, len(self.blocks))

    def parameter_counts(self) -> dict:
        """Total and ACTIVE parameters (active: what one understanding token passes through)."""
        total = sum(p.numel() for p in self.parameters())
        inactive = 0
        for blk in self.blocks:
            if isinstance(blk.ff, GroupedMoE):
                per = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
                for g in range(len(GROUPS)):
                    te, se = blk.ff.token_experts[g], blk.ff.seq_experts[g]
                    inactive += sum(per(m) for m in te) - (per(te[0]) if g == 0 else 0)
                    inactive += sum(per(m) for m in se) - (per(se[0]) if g == 0 else 0)
                    if g != 0:
                        inactive += per(blk.ff.token_router[g]) + per(blk.ff.seq_router[g])
        return {"total": total, "active": total - inactive}


def build_model(cfg: ModelConfig, seed: int = 0) -> UnifiedFaceModel:
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = UnifiedFaceModel(cfg)
    return model

