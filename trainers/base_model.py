"""Objectives that train the tiny SynthFace base model, in two stages on the one loop (trainers/loop.py):

1. ``VaeObjective``: the AutoencoderKL reconstructs SynthFace images (L1 + MSE, extra weight on the mouth region,
   which carries the expression and is the first detail a tiny VAE loses; a tiny KL term).
2. ``TextToImageObjective``: UNet + text encoder learn v-prediction denoising of the frozen VAE's latents from
   captions that name a random subset of the attributes (10% empty captions for classifier-free guidance).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.images import comfy_to_model, numpy_to_comfy
from ..core.progress import Progress
from ..core.synthface import base_model as bm
from ..core.synthface.captions import caption, random_mention
from ..core.synthface.dataset import sample
from ..core.synthface.splits import identities
from .loop import TrainConfig, train

log = logging.getLogger("facesmith.train")


def render_pool(count: int, seed: int, size: int = bm.IMAGE_SIZE, cache: Path | None = None):
    """``count`` training-split samples (held-out attribute combinations excluded): uint8 images + attributes."""
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        return z["images"], json.loads(str(z["attrs"]))
    rng = np.random.default_rng(seed)
    ids = identities("train")
    images = np.zeros((count, size, size, 3), np.uint8)
    attrs = []
    for i in range(count):
        s = sample(rng, ids, size)
        images[i] = s.image
        attrs.append(s.attributes)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, images=images, attrs=np.array(json.dumps(attrs)))
        tmp.replace(cache)
    return images, attrs


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 3, H, W) in [-1, 1], through the one image-conversion module."""
    return comfy_to_model(numpy_to_comfy(images))


def _mouth_weight(size: int) -> torch.Tensor:
    w = torch.ones(1, 1, size, size)
    w[..., int(size * 0.58):int(size * 0.80), int(size * 0.32):int(size * 0.68)] = 4.0
    w[..., int(size * 0.36):int(size * 0.50), int(size * 0.28):int(size * 0.72)] = 2.0  # eyes / glasses
    return w


class VaeObjective:
    def __init__(self, vae, images: np.ndarray, batch_size: int = 32, kl_weight: float = 1e-6, seed: int = 0):
        self.vae, self.images, self.batch_size, self.kl_weight = vae, images, batch_size, kl_weight
        self.rng = np.random.default_rng(seed)
        self.weight = _mouth_weight(images.shape[1])

    def modules(self):
        return {"vae": self.vae}

    def parameters(self):
        return list(self.vae.parameters())

    def make_batch(self, step):
        idx = self.rng.integers(0, len(self.images), self.batch_size)
        return to_tensor(self.images[idx])

    def loss(self, x, step):
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample
        err = (rec - x).abs() + (rec - x) ** 2
        recon = (err * self.weight).mean()
        kl = post.kl().mean()
        return recon + self.kl_weight * kl, {"recon": float(recon.detach()), "kl": float(kl.detach())}


class TextToImageObjective:
    def __init__(self, unet, text_encoder, tokenizer, scheduler, latents: torch.Tensor, attrs: list[dict],
                 batch_size: int = 64, mention_p: float = 0.8, uncond_p: float = 0.1, seed: int = 0):
        self.unet, self.text_encoder, self.tokenizer, self.scheduler = unet, text_encoder, tokenizer, scheduler
        self.latents, self.attrs = latents, attrs  # latents: (N, 2*C, h, w) posterior mean and std, unscaled
        self.batch_size, self.mention_p, self.uncond_p = batch_size, mention_p, uncond_p
        self.rng = np.random.default_rng(seed)
        self.scaling = float(scheduler_scaling(latents))

    def modules(self):
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def parameters(self):
        return list(self.unet.parameters()) + list(self.text_encoder.parameters())

    def captions_for(self, idx) -> list[str]:
        out = []
        for i in idx:
            if self.rng.random() < self.uncond_p:
                out.append("")
            else:
                out.append(caption(self.attrs[int(i)], mention=random_mention(self.rng, self.mention_p)))
        return out

    def make_batch(self, step):
        idx = self.rng.integers(0, len(self.latents), self.batch_size)
        stats = self.latents[idx]
        mean, std = stats.chunk(2, dim=1)
        lat = (mean + std * torch.randn_like(std)) * self.scaling
        ids = self.tokenizer(self.captions_for(idx), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return lat, ids

    def loss(self, batch, step):
        lat, ids = batch
        noise = torch.randn_like(lat)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (lat.shape[0],))
        noisy = self.scheduler.add_noise(lat, noise, t)
        target = self.scheduler.get_velocity(lat, noise, t)
        cond = self.text_encoder(ids)[0]
        pred = self.unet(noisy, t, encoder_hidden_states=cond).sample
        return F.mse_loss(pred, target), {}


def scheduler_scaling(latent_stats: torch.Tensor) -> float:
    mean, _ = latent_stats.chunk(2, dim=1)
    return 1.0 / float(mean.std())


@torch.no_grad()
def encode_pool(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    out = []
    vae.eval()
    for i in range(0, len(images), batch):
        d = vae.encode(to_tensor(images[i:i + batch])).latent_dist
        out.append(torch.cat([d.mean, d.std], dim=1))
    return torch.cat(out)


def zero_unused_token_rows(text_encoder, tokenizer) -> int:
    """Zero the embedding rows of tokens no SynthFace caption uses (they never trained; zeros compress well)."""
    from ..core.synthface.render import ATTRIBUTES

    words = set()
    for name, values in ATTRIBUTES.items():
        for v in values:
            words.add(caption({name: v}, mention=[name]))
    used = set(tokenizer(sorted(words)).input_ids[0])
    for ids in tokenizer(sorted(words)).input_ids:
        used.update(ids)
    emb = text_encoder.get_input_embeddings().weight
    keep = torch.zeros(emb.shape[0], dtype=torch.bool)
    keep[sorted(used)] = True
    with torch.no_grad():
        emb[~keep] = 0
    return int(keep.sum())


def train_vae(vae, images, steps: int, work_dir: Path, seed: int = 0, lr: float = 1e-3, batch_size: int = 32,
              progress: Progress | None = None):
    obj = VaeObjective(vae, images, batch_size=batch_size, seed=seed)
    cfg = TrainConfig(steps=steps, learning_rate=lr, seed=seed, work_dir=str(work_dir), checkpoint_every=250,
                      log_every=100, warmup_steps=100, lr_schedule="cosine")
    return train(obj, cfg, progress)


def train_text_to_image(components: dict, latents, attrs, steps: int, work_dir: Path, seed: int = 0,
                        lr: float = 1e-3, batch_size: int = 64, ema: float = 0.999, progress: Progress | None = None):
    obj = TextToImageObjective(components["unet"], components["text_encoder"], components["tokenizer"],
                               components["scheduler"], latents, attrs, batch_size=batch_size, seed=seed)
    cfg = TrainConfig(steps=steps, learning_rate=lr, seed=seed, work_dir=str(work_dir), checkpoint_every=500,
                      log_every=100, ema_decay=ema, warmup_steps=200, lr_schedule="cosine")
    return train(obj, cfg, progress), obj.scaling


def build_base(out_dir: Path, work_dir: Path, vae_steps: int, unet_steps: int, pool: int = 30000, seed: int = 0,
               lr: float = 1e-3, progress_factory=None) -> Path:
    """Train the whole base model in stages (each resumable from work_dir) and save a diffusers folder."""
    import os
    import shutil

    from diffusers import AutoencoderKL

    from ..core.formats import atomic_write_text

    out_dir, work_dir = Path(out_dir), Path(work_dir)
    if (out_dir / "model_index.json").exists():
        raise FileExistsError(f"train base: {out_dir} already holds a model; remove it or choose another --out")
    work_dir.mkdir(parents=True, exist_ok=True)
    pf = progress_factory or (lambda label: None)
    images, attrs = render_pool(pool, seed, cache=work_dir / f"pool-{pool}-{seed}.npz")
    comps = bm.build_components(seed)
    vae_done = work_dir / "vae"
    if (vae_done / "config.json").exists():
        comps["vae"] = AutoencoderKL.from_pretrained(vae_done, local_files_only=True)
        vae_result = json.loads((vae_done / "facesmith_train.json").read_text())
    else:
        r = train_vae(comps["vae"], images, vae_steps, work_dir / "vae-ckpt", seed, lr, progress=pf("train VAE"))
        comps["vae"].save_pretrained(work_dir / "vae.tmp", safe_serialization=True)
        vae_result = {"steps": r.steps_done, "final_loss": float(np.mean(r.loss_history[-100:]))}
        (work_dir / "vae.tmp" / "facesmith_train.json").write_text(json.dumps(vae_result))
        os.replace(work_dir / "vae.tmp", vae_done)
    comps["vae"].requires_grad_(False)
    latents = encode_pool(comps["vae"], images)
    scaling = scheduler_scaling(latents)
    comps["vae"].register_to_config(scaling_factor=scaling)
    r, _ = train_text_to_image(comps, latents, attrs, unet_steps, work_dir / "unet-ckpt", seed, lr,
                               progress=pf("train UNet + text encoder"))
    used = zero_unused_token_rows(comps["text_encoder"], comps["tokenizer"])
    pipe = bm.make_pipeline(comps).to(torch.float16)  # stored in fp16 (half the size); loaders upcast
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(bm.TOKENIZER_DIR / f, tmp / "tokenizer" / f)
    atomic_write_text(tmp / "facesmith_train.json", json.dumps({
        "what": "tiny SynthFace base model (SD-1.5 shape)", "seed": seed, "pool": pool, "lr": lr,
        "vae": vae_result, "unet_text_steps": r.steps_done,
        "unet_final_loss": float(np.mean(r.loss_history[-100:])), "latent_scaling_factor": scaling,
        "used_token_rows": used,
        "command": f"facesmith train base --out {_display_path(out_dir)} --vae-steps {vae_steps} "
                   f"--unet-steps {unet_steps} --pool {pool} --seed {seed}",
    }, indent=2))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def _display_path(path: Path) -> str:
    """``path`` relative to the pack root when it lies inside it (so recorded commands are portable)."""
    try:
        return str(Path(path).resolve().relative_to(bm.PACK_ROOT))
    except ValueError:
        return str(path)
