"""``facesmith train base``: train the tiny SynthFace base model (VAE, then UNet + text encoder)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..core.progress import tqdm_progress
from ..core.synthface.base_model import BASE_DIR

_HELP = {
    "vae_steps": "VAE training steps", "unet_steps": "UNet + text encoder training steps",
    "pool": "rendered training images", "seed": "seed of the pool, the weights and every batch",
    "lr": "learning rate of both stages", "vae_batch": "VAE batch size", "unet_batch": "UNet batch size",
    "mention_p": "probability that a caption names each attribute",
    "identity_p": "probability that a caption names each identity trait (words for who the person is)",
    "anonymous_p": "share of captions with no identity words at all",
    "precision": "mixed precision on a GPU: no, fp16 or bf16",
    "workers": "render processes (0 = one per CPU core; the pool does not depend on it)",
    "vae_seconds": "if > 0: --vae-steps becomes the number of steps that fit this many seconds on this machine",
    "init_from": "continue from this base folder: keep its VAE, train its UNet + text encoder further",
    "unet_seconds": "if > 0: --unet-steps becomes the number of steps that fit this many seconds on this machine "
                    "(timed first; the count is recorded in facesmith_train.json)",
}


def add_arguments(p) -> None:
    from .base_model import BaseSettings

    p.add_argument("--out", default=str(BASE_DIR), help="diffusers folder to write (must not exist)")
    p.add_argument("--work-dir", default=".cache/train-base", help="checkpoints; a rerun resumes from here")
    for f in fields(BaseSettings):
        kw = {"choices": ["no", "fp16", "bf16"]} if f.name == "precision" else {}
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"{_HELP[f.name]} (default {f.default})", **kw)
    p.add_argument("--no-resume", action="store_true",
                   help="start fresh: ignore (and replace) the checkpoints and finished VAE in --work-dir")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def main(args) -> int:
    import torch

    from .base_model import BaseSettings, build_base

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BaseSettings(**{f.name: getattr(args, f.name) for f in fields(BaseSettings)})
    out = build_base(Path(args.out), Path(args.work_dir), settings, progress_factory=tqdm_progress,
                     resume=not args.no_resume)
    print(f"saved {out}")
    return 0
