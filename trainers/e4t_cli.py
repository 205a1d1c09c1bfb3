"""``facesmith train domain-encoder``: E4T domain tuning of an encoder + domain LoRA on a dataset folder or SynthFace.

Examples::

    facesmith train domain-encoder --synthface --identities 2000 --views 4 --steps 3000 --out synthface-e4t
    facesmith train domain-encoder --dataset my_faces/ --base diffusers/my-sd15 --out my-e4t --steps 5000
    accelerate launch -m facesmith.core.cli train domain-encoder --dataset my_faces/ --out my-e4t

The result is ``<models>/facesmith/e4t/<out>.safetensors`` (encoder head + domain LoRA, metadata: base name and
fingerprint, method, hyper-parameters, steps). Checkpoints go to ``--work-dir``; running the same command again
resumes from the newest one.
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

log = logging.getLogger("facesmith.train")

DEFAULT_BASE = "diffusers/synthface-base"


def resolved_argv(argv: list[str], steps: int) -> list[str]:
    """The command line with a time budget (``--seconds S``) replaced by the step count it resolved to, so the
    recorded command reproduces the weights on any machine."""
    if not any(a == "--seconds" or a.startswith("--seconds=") for a in argv):
        return list(argv)
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--seconds", "--steps"):
            skip = True
        elif not a.startswith(("--seconds=", "--steps=")):
            out.append(a)
    return out + ["--steps", str(steps)]


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset folder (metadata.jsonl with file_name/text[/identity], or image + .txt)")
    src.add_argument("--synthface", action="store_true", help="render SynthFace TRAIN identities on the fly")
    p.add_argument("--identities", type=int, default=2000, help="--synthface: number of train identities")
    p.add_argument("--views", type=int, default=4, help="--synthface: views per identity (random attributes)")
    p.add_argument("--workers", type=int, default=0,
                   help="--synthface: render processes (0 = one per CPU core; the images do not depend on it)")
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: a folder, or 'diffusers/<name>' / 'checkpoints/<file>'")
    p.add_argument("--out", required=True,
                   help="output name (saved as <models>/facesmith/e4t/NAME.safetensors), or a path ending .safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--t-min", type=int, default=300,
                   help="lowest training timestep (identity is coarse structure, decided at high noise levels)")
    p.add_argument("--rank", type=int, default=4, help="domain LoRA rank")
    p.add_argument("--alpha", type=float, default=None, help="domain LoRA alpha (default: = rank)")
    p.add_argument("--emb-reg", type=float, default=1e-2, help="L2 weight on the predicted embedding offset")
    p.add_argument("--weight-reg", type=float, default=1e-3, help="L2 weight on the LoRA weight offsets")
    p.add_argument("--mention-p", type=float, default=1.0,
                   help="--synthface: probability that a training caption names each attribute")
    p.add_argument("--same-p", type=float, default=0.0,
                   help="share of rows denoising the reference image itself (the paper's target) instead of another "
                        "view of the same identity (only where identities are known)")
    p.add_argument("--n-vectors", type=int, default=1, help="word vectors per concept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0.0,
                   help="if > 0: --steps becomes the number of steps that fit this many seconds here (timed first; "
                        "the count is recorded in the output's metadata)")
    p.add_argument("--precision", default="no", choices=["no", "fp16", "bf16"], help="mixed precision (accelerate)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--work-dir", default=None, help="checkpoints (default .cache/train-e4t/<out>)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --work-dir")
    p.add_argument("--device", default="auto", help="auto/cpu/cuda (under accelerate launch: each process's GPU)")
    p.add_argument("--save-dtype", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def output_path(out: str, subdir: str = "e4t") -> Path:
    """``--out``: a path ending .safetensors (with a folder), or a name saved as <models>/facesmith/SUBDIR/NAME."""
    from ..core import paths
    from ..core.formats import safe_join

    if out.endswith(".safetensors") and ("/" in out or out.startswith(".")):
        return Path(out)
    name = out if out.endswith(".safetensors") else out + ".safetensors"
    return safe_join(paths.models_root("facesmith"), f"{subdir}/{name}")


def main(args) -> int:
    import torch
    from accelerate import PartialState

    from ..core.concept.encoder import EncoderConfig
    from ..core.models import native_size
    from ..core.formats import atomic_path, atomic_write_text, check_new_file
    from ..core.models import load_pipeline
    from ..core.progress import tqdm_progress
    from .e4t import DomainTrainSettings, build_pool, folder_images, synthface_images, train_domain_encoder
    from ..core.training.loop import loss_graph
    from .settings import training_device

    if args.threads:
        torch.set_num_threads(args.threads)
    out = output_path(args.out)
    for f in (out, out.with_suffix(".loss.png"), out.with_suffix(".json")):
        check_new_file(f, args.overwrite)  # fail before any work
    base = load_pipeline(args.base, device=training_device(args.device), dtype="fp32")
    state = PartialState()  # as training_device set it up: this process's place under accelerate launch
    dp = base.pipe
    settings = DomainTrainSettings(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, rank=args.rank,
        lora_alpha=float(args.alpha if args.alpha is not None else args.rank), emb_reg=args.emb_reg,
        weight_reg=args.weight_reg, n_vectors=args.n_vectors, seed=args.seed, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, checkpoint_every=args.checkpoint_every,
        t_min=args.t_min, mention_p=args.mention_p, same_p=args.same_p, seconds=args.seconds)
    cfg = EncoderConfig.for_pipeline(dp, n_vectors=args.n_vectors)
    size = native_size(dp)
    if args.synthface:
        images, ids, attrs = synthface_images(args.identities, args.views, args.seed, size, args.workers)
        captions, source = None, f"synthface train identities={args.identities} views={args.views} seed={args.seed}"
    else:
        images, ids, captions = folder_images(args.dataset, size)
        attrs, source = None, f"folder {args.dataset}"
    log.info("domain pool: %d images (%s)", len(images), source)
    pool = build_pool(base, images, ids, attrs, captions, cfg=cfg, progress=tqdm_progress("encode pool"),
                      source=source)
    del images
    work_dir = args.work_dir or str(Path(".cache") / "train-e4t" / out.stem)
    bundle, result = train_domain_encoder(base, pool, settings, work_dir=work_dir, resume=not args.no_resume,
                                          progress=tqdm_progress("train domain encoder"), move_base=True)
    bundle.info["command"] = "facesmith train domain-encoder " + " ".join(
        shlex.quote(a) for a in resolved_argv(sys.argv[3:], bundle.info["steps"]))
    bundle.info["base_model"] = args.base
    if state.is_main_process:
        dtype = torch.float16 if args.save_dtype == "fp16" else torch.float32
        bundle.save(out, overwrite=args.overwrite, dtype=dtype)
        from PIL import Image

        with atomic_path(out.with_suffix(".loss.png"), args.overwrite) as tmp:
            Image.fromarray(loss_graph(result.loss_history, title=f"E4T domain tuning {out.stem}")).save(tmp, "PNG")
        atomic_write_text(out.with_suffix(".json"), json.dumps(
            dict(bundle.info, base_name=bundle.base_name, base_fingerprint=bundle.base_fingerprint,
                 loss_history=[round(x, 5) for x in result.loss_history]), indent=1), overwrite=args.overwrite)
        print(f"saved {out} ({result.steps_done} steps, final loss {bundle.info['final_loss']})")
    return 0
