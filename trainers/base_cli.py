"""``facesmith train base``: train the tiny SynthFace base model (VAE, then UNet + text encoder)."""
from __future__ import annotations

from pathlib import Path

from ..core.progress import tqdm_progress
from ..core.synthface.base_model import BASE_DIR


def add_arguments(p) -> None:
    p.add_argument("--out", default=str(BASE_DIR), help="diffusers folder to write (must not exist)")
    p.add_argument("--work-dir", default=".cache/train-base", help="checkpoints; a rerun resumes from here")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--unet-steps", type=int, default=6000)
    p.add_argument("--pool", type=int, default=30000, help="rendered training images")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def main(args) -> int:
    import torch

    from .base_model import build_base

    if args.threads:
        torch.set_num_threads(args.threads)
    out = build_base(Path(args.out), Path(args.work_dir), args.vae_steps, args.unet_steps, args.pool, args.seed,
                     args.lr, progress_factory=tqdm_progress)
    print(f"saved {out}")
    return 0
