"""LoRA weight offsets on a UNet's attention layers: attach with peft for training, read back, fuse for inference.

In memory a LoRA is ``{module_path: (down, up)}`` with ``down`` ``(rank, in)`` and ``up`` ``(out, rank)`` (peft's
``lora_A``/``lora_B``), plus ``rank`` and ``alpha``; the weight offset of a module is ``up @ down * alpha / rank``.
Training uses peft (``unet.add_adapter(LoraConfig(...))``); inference fuses the offsets straight into the weights and
copies the saved originals back afterwards, so a restored pipeline is bit-identical and a generate pays no per-step
LoRA cost.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from .inference import lora_delta

log = logging.getLogger("facesmith")

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "facesmith_e4t"

LoraWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]


def lora_tensors(lora: LoraWeights | None, prefix: str = "lora.") -> dict[str, torch.Tensor]:
    """A LoRA as file tensors: ``{prefix}{path}.down`` and ``{prefix}{path}.up``."""
    out = {}
    for path, (down, up) in (lora or {}).items():
        out[f"{prefix}{path}.down"] = down
        out[f"{prefix}{path}.up"] = up
    return out


def lora_from_tensors(tensors: dict, prefix: str = "lora.") -> LoraWeights:
    """The LoRA that ``lora_tensors`` wrote (float32)."""
    lora: LoraWeights = {}
    for k, v in tensors.items():
        if k.startswith(prefix) and k.endswith(".down"):
            p = k[len(prefix):-len(".down")]
            lora[p] = (v.float(), tensors[f"{prefix}{p}.up"].float())
    return lora


def target_module_paths(unet) -> list[str]:
    """Every attention projection of the UNet that a FaceSmith LoRA targets (``...attn1.to_q`` etc.)."""
    out = []
    for name, module in unet.named_modules():
        if name.endswith(tuple("." + t for t in TARGET_MODULES)) and isinstance(module, torch.nn.Linear):
            if ".base_layer" in name or ".lora_" in name:
                continue
            out.append(name)
    return out


def _base_linear(module):
    """The plain Linear behind a (possibly peft-wrapped) module."""
    return getattr(module, "base_layer", module)


def weight_offset_l2(lora: "dict | torch.nn.ModuleDict", scale: float) -> torch.Tensor:
    """Sum over layers of ``||scale * up @ down||_F^2``, computed as ``sum((up^T up) * (down down^T))`` (rank x rank)."""
    total = None
    for down, up in _pairs(lora):
        gram_up = up.t() @ up
        gram_down = down @ down.t()
        term = (gram_up * gram_down).sum() * (scale ** 2)
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def _pairs(lora) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(lora, "pairs"):
        yield from lora.pairs()
    else:
        for down, up in lora.values():
            yield down, up


class LoraModules(torch.nn.Module):
    """The peft LoRA layers of a UNet as one small module (shared, not copied): what the training loop checkpoints
    and optimises instead of the whole UNet."""

    def __init__(self, unet, adapter: str = ADAPTER_NAME):
        super().__init__()
        self.paths: list[str] = []
        downs, ups = torch.nn.ModuleList(), torch.nn.ModuleList()
        for name, module in unet.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
                self.paths.append(name)
                downs.append(lora_a[adapter])
                ups.append(module.lora_B[adapter])
        if not self.paths:
            raise ValueError(f"the UNet has no LoRA adapter {adapter!r} attached")
        self.down = downs
        self.up = ups

    def pairs(self):
        for d, u in zip(self.down, self.up):
            yield d.weight, u.weight

    def weights(self) -> LoraWeights:
        """A detached CPU float32 copy ``{path: (down, up)}``."""
        return {p: (d.weight.detach().float().cpu().clone(), u.weight.detach().float().cpu().clone())
                for p, d, u in zip(self.paths, self.down, self.up)}


def attach(unet, rank: int, alpha: float, init: LoraWeights | None = None, adapter: str = ADAPTER_NAME,
           targets: list[str] | None = None) -> LoraModules:
    """Attach a trainable peft LoRA (rank, alpha) to the UNet's attention projections; ``init`` sets its weights.

    Only the LoRA parameters require grad afterwards (the caller freezes the rest). Undo with :func:`detach`.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if init is not None:
        targets = sorted(init)
    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), init_lora_weights=True,
                     target_modules=list(targets) if targets else list(TARGET_MODULES))
    unet.add_adapter(cfg, adapter_name=adapter)
    mods = LoraModules(unet, adapter)
    if init is not None:
        missing = set(init) - set(mods.paths)
        if missing:
            raise ValueError(f"LoRA modules not found in this UNet: {sorted(missing)[:3]} ...")
        with torch.no_grad():
            for p, d, u in zip(mods.paths, mods.down, mods.up):
                down, up = init[p]
                if tuple(down.shape) != tuple(d.weight.shape) or tuple(up.shape) != tuple(u.weight.shape):
                    raise ValueError(f"LoRA weight shape mismatch at {p}: {tuple(down.shape)}/{tuple(up.shape)} vs "
                                     f"{tuple(d.weight.shape)}/{tuple(u.weight.shape)}")
                d.weight.copy_(down)
                u.weight.copy_(up)
    for p in mods.parameters():
        p.requires_grad_(True)
    return mods


def detach(unet) -> None:
    """Remove every peft layer from the UNet (it is a plain UNet again, with its original weights)."""
    from diffusers.utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(unet)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(unet, attr):
            try:
                delattr(unet, attr)
            except AttributeError:
                pass


@contextlib.contextmanager
def trainable_lora(unet, rank: int, alpha: float, init: LoraWeights | None = None,
                   targets: list[str] | None = None) -> Iterator[LoraModules]:
    """``attach`` on enter, ``detach`` on exit (also on error), with the UNet's own weights frozen meanwhile and its
    ``requires_grad`` flags restored afterwards. ``targets``: module paths (default: the attention projections)."""
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    unet.requires_grad_(False)
    mods = attach(unet, rank, alpha, init, targets=targets)
    try:
        yield mods
    finally:
        detach(unet)
        for n, p in unet.named_parameters():
            p.requires_grad_(flags.get(n, False))


class HookedLora(torch.nn.Module):
    """A LoRA held as plain parameters and applied with forward hooks (``out += scale * x @ down^T @ up^T``): the
    same maths as peft's, without rebuilding the UNet's modules, for the few-step one-image tuning where peft's
    injection and removal would cost more than the steps."""

    def __init__(self, lora: LoraWeights):
        super().__init__()
        self.paths = sorted(lora)
        self.down = torch.nn.ParameterList(torch.nn.Parameter(lora[p][0].detach().clone().float()) for p in self.paths)
        self.up = torch.nn.ParameterList(torch.nn.Parameter(lora[p][1].detach().clone().float()) for p in self.paths)

    def pairs(self):
        yield from zip(self.down, self.up)

    def weights(self) -> LoraWeights:
        return {p: (d.detach().float().cpu().clone(), u.detach().float().cpu().clone())
                for p, d, u in zip(self.paths, self.down, self.up)}


def fresh_lora(unet, rank: int, seed: int = 0) -> LoraWeights:
    """A rank-``rank`` LoRA on every target module, initialised like peft (random down, zero up: no change yet)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for p in target_module_paths(unet):
        w = unet.get_submodule(p).weight
        bound = 1.0 / (w.shape[1] ** 0.5)
        out[p] = ((torch.rand(rank, w.shape[1], generator=g) * 2 - 1) * bound, torch.zeros(w.shape[0], rank))
    return out


@contextlib.contextmanager
def hooked_lora(unet, lora: LoraWeights, scale: float) -> Iterator[HookedLora]:
    """Trainable ``HookedLora`` applied to ``unet`` while the block runs; hooks removed on exit."""
    mods = HookedLora(lora).to(next(unet.parameters()).device)
    handles = []
    try:
        for i, path in enumerate(mods.paths):
            module = unet.get_submodule(path)

            def hook(mod, args, out, i=i):
                x = args[0]
                delta = (x.to(mods.down[i].dtype) @ mods.down[i].t()) @ mods.up[i].t()
                return out + (delta * scale).to(out.dtype)

            handles.append(module.register_forward_hook(hook))
        yield mods
    finally:
        for h in handles:
            h.remove()


_delta = lora_delta  # the offset maths lives in inference.py (shared with the native ComfyUI patch)


class FusedLora:
    """Precomputed weight offsets for one (device, dtype); ``applied(unet)`` adds them and restores exactly."""

    def __init__(self, lora: LoraWeights, scale: float):
        self.lora, self.scale = lora, float(scale)
        self._cache: dict = {}

    def deltas(self, device, dtype) -> dict[str, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache = {key: {p: _delta(d, u, self.scale, device, dtype) for p, (d, u) in self.lora.items()}}
        return self._cache[key]

    def _targets(self, unet) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, delta) pairs for ``unet``, cached per UNet object and weight device/dtype."""
        p = next(unet.parameters())
        key = (id(unet), str(p.device), p.dtype)
        cached = getattr(self, "_targets_cache", None)
        if cached is not None and cached[0] == key and all(
                _base_linear(unet.get_submodule(path)).weight is w for path, w in cached[2][:1]):
            return cached[1]
        pairs, named = [], []
        for path, delta in self.deltas(p.device, p.dtype).items():
            weight = _base_linear(unet.get_submodule(path)).weight
            if weight.shape != delta.shape:
                raise ValueError(f"LoRA offset for {path} has shape {tuple(delta.shape)}, the UNet's weight is "
                                 f"{tuple(weight.shape)}")
            pairs.append((weight, delta))
            named.append((path, weight))
        self._targets_cache = (key, pairs, named)
        return pairs

    @contextlib.contextmanager
    def applied(self, unet) -> Iterator[None]:
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for weight, delta in self._targets(unet):
                    saved.append((weight, weight.detach().clone()))
                    weight.add_(delta)
            yield
        finally:
            with torch.no_grad():
                for weight, original in reversed(saved):
                    weight.copy_(original)
