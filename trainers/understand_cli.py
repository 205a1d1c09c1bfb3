"""``facesmith train face-vqa``: the unified face model (``--backend unified``, MoE or dense) or a LoRA on a local
vision-language model folder (``--backend vlm``), trained on SynthFace VQA by the one training loop.

Examples::

    facesmith train face-vqa --arch moe --out synthface-unified-moe
    facesmith train face-vqa --arch dense --out synthface-unified-dense
    facesmith train face-vqa --backend vlm --vlm models/LLM/SmolVLM-256M --out my-face-lora --steps 200

Outputs go to ``<models>/facesmith/understand/NAME.safetensors`` (or a path ending .safetensors), with ``NAME.json``
(seed, command, settings, loss history) and ``NAME.loss.png`` beside. Checkpoints in ``--work-dir``; running the
same command again resumes.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--backend", choices=("unified", "vlm"), default="unified")
    p.add_argument("--arch", choices=("moe", "dense"), default="moe", help="unified: mixture of experts or dense")
    p.add_argument("--vlm", help="vlm: a local transformers vision-language model folder")
    p.add_argument("--out", required=True, help="output name under <models>/facesmith/understand/, or a .safetensors path")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--work-dir", default=None, help="checkpoints (default .cache/face-vqa-NAME); a rerun resumes")
    p.add_argument("--cache-dir", default=".cache", help="rendered SynthFace pool cache")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--pool-identities", type=int, default=None)
    p.add_argument("--per-identity", type=int, default=None)
    p.add_argument("--stem", choices=("conv4", "residual"), default=None,
                   help="unified: image stem (conv4: four strided convolutions; residual: residual blocks at 32 and "
                        "16 px; default conv4)")
    p.add_argument("--stem-width", type=int, default=None, help="unified: stem channels at 32 px (default 32)")
    p.add_argument("--gate", choices=("prob", "unit"), default=None,
                   help="unified moe: a routed expert's output times its router probability (prob, the default) or "
                        "times 1 with a straight-through gradient to the router (unit)")
    p.add_argument("--init-from", default=None,
                   help="unified: continue from this model file (same architecture; its weights and codebook) with "
                        "a fresh schedule of --steps")
    for task in ("vqa", "caption", "draw"):
        p.add_argument(f"--batch-{task}", type=int, default=None, help=f"unified: {task} sequences per step")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="unified: if > 0, --steps becomes the number of steps that fit this many seconds here")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--workers", type=int, default=0, help="render processes for the pool (0: one per core)")
    p.add_argument("--rank", type=int, default=8, help="vlm: LoRA rank")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def output_path(out: str) -> Path:
    """``--out``: a path ending .safetensors (with a folder), or a name saved under <models>/facesmith/understand/
    (path traversal refused), as every trainer's ``--out``."""
    from ..core.understand.weights import SUBFOLDER
    from .e4t_cli import output_path as trainer_output_path

    return trainer_output_path(out, SUBFOLDER)


def main(args) -> int:
    import torch

    from ..core.progress import tqdm_progress

    if args.threads:
        torch.set_num_threads(args.threads)
    out = output_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from .e4t_cli import resolved_argv

    def command(steps: int) -> str:  # a time budget is recorded as the step count it resolved to
        return "facesmith " + " ".join(shlex.quote(a) for a in resolved_argv(sys.argv[1:], steps))

    work = args.work_dir or str(Path(".cache") / f"face-vqa-{out.stem}")
    if args.backend == "vlm":
        from .understand_vlm import train_vlm_lora

        if not args.vlm:
            raise ValueError("--backend vlm needs --vlm FOLDER (a local transformers vision-language model)")
        info = train_vlm_lora(args.vlm, out, seed=args.seed, steps=args.steps or 200, lr=args.lr or 1e-3,
                              rank=args.rank, work_dir=work, resume=not args.no_resume, overwrite=args.overwrite,
                              progress=tqdm_progress("face-vqa lora"), command=command(args.steps or 200))
    else:
        from .understand import train_unified

        info = train_unified(out, args.arch, seed=args.seed, work_dir=work, cache_dir=args.cache_dir,
                             progress=tqdm_progress(f"face-vqa {args.arch}"), resume=not args.no_resume,
                             overwrite=args.overwrite, command=command, steps=args.steps, lr=args.lr,
                             pool_identities=args.pool_identities, per_identity=args.per_identity,
                             stem=args.stem, stem_width=args.stem_width, gate=args.gate, init_from=args.init_from,
                             batch_vqa=args.batch_vqa, batch_caption=args.batch_caption,
                             batch_draw=args.batch_draw, workers=args.workers, seconds=args.seconds,
                             checkpoint_every=args.checkpoint_every)
    print(f"saved {out} ({info['steps']} steps)")
    return 0
