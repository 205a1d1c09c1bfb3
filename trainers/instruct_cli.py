"""``facesmith train instruct``: train a MIGE-style instruction model over SynthFace TRAIN identities.

Example::

    facesmith train instruct --per-task 3000 --steps 1500 --out synthface-instruct                  # joint
    facesmith train instruct ... --tasks instruction_edit --out synthface-instruct-edit-only       # single task

The result is ``<models>/facesmith/instruct/<out>.safetensors`` (float16; fusion network, face encoder, UNet LoRA,
source channel weights, metadata: base name and fingerprint, tasks, hyper-parameters, steps, command) with ``.json``
(loss history) and ``.loss.png`` beside it. Checkpoints go to ``--work-dir``; the same command again resumes from the
newest. ``--pool-cache FILE`` keeps the rendered samples' base features, so the joint and single-task models share
one pool. ``--identity-adapter NAME`` trains subject generation with that adapter's identity of image1 applied (the
model then expects it at use: Apply Identity into Instruct Generate's ``concepts``).
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

log = logging.getLogger("facesmith.train")

DEFAULT_BASE = "diffusers/synthface-base"
SUBDIR = "instruct"


def add_arguments(p) -> None:
    from ..core.instruct.model import TASKS

    p.add_argument("--per-task", type=int, default=3000, help="rendered samples of each task in the pool")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help=f"comma-separated tasks to train on (default all three: the joint model); from {TASKS}")
    p.add_argument("--pool-cache", default=None,
                   help="safetensors file caching the pool's base features (made if absent)")
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: a folder, or 'diffusers/<name>'")
    p.add_argument("--face-encoder", default=None,
                   help="face encoder (default: models/facesmith/identity/face-encoder.safetensors)")
    p.add_argument("--out", required=True,
                   help=f"output name (<models>/facesmith/{SUBDIR}/NAME.safetensors), or a path ending .safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--init-from", default=None,
                   help="continue this earlier instruction model (a name under models/facesmith/instruct/ or a path) "
                        "with a fresh schedule; its shape, base and face encoder must match")
    p.add_argument("--rebase", action="store_true",
                   help="with --init-from: that model was trained on another base of the same shape (e.g. an "
                        "earlier stage of --base); continue it on --base (recorded in the output's .json)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seconds", type=float, default=0.0,
                   help="if > 0: --steps becomes the number of steps that fit this many seconds here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--drop-p", type=float, default=0.05,
                   help="per row: drop the instruction, the source, or both, each with this probability")
    p.add_argument("--n-tokens", type=int, default=4, help="word vectors per referenced image")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--identity-p", type=float, default=0.0,
                   help="subject generation instructions name each visible identity trait of the person with this "
                        "probability after <image1> (0 = never), so identity words can join the image at use")
    p.add_argument("--id-weight", type=float, default=0.0,
                   help="weight of an identity loss (the model's face encoder on the decoded clean estimate against "
                        "the target's face, as the identity adapter trains; 0 = off)")
    p.add_argument("--identity-adapter", default=None,
                   help="an identity adapter (a name under models/facesmith/identity/ or a path) applied to subject "
                        "generation rows in training, as Apply Identity applies image1's identity at use")
    p.add_argument("--identity-weight", type=float, default=0.5,
                   help="the identity adapter's weight in training (Apply Identity's default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool-seed", type=int, default=None,
                   help="seed of the pool's renders (default: --seed); a continuation keeps its pool and draws new "
                        "batches with another --seed")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--work-dir", default=None, help="checkpoints (default .cache/train-instruct/<out>)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --work-dir")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--device", default="auto", help="auto/cpu/cuda (under accelerate launch: each process's GPU)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes rendering the pool (0 = one per CPU core; the pool does not depend on it)")


def existing_model(arg: str, subdir: str, flag: str) -> Path:
    """A model file given on the command line: a path ending .safetensors, or a name found under
    models/facesmith/SUBDIR/ (the user's folders first, then the shipped models)."""
    from ..core import paths

    if arg.endswith(".safetensors") and ("/" in arg or arg.startswith(".")):
        if not Path(arg).is_file():
            raise SystemExit(f"{flag} {arg}: no such file")
        return Path(arg)
    name = arg if arg.endswith(".safetensors") else arg + ".safetensors"
    try:
        return paths.resolve("facesmith", f"{subdir}/{name}")
    except FileNotFoundError as e:
        raise SystemExit(f"{flag} {arg}: {e}") from None


def main(args) -> int:
    import torch
    from ..core.formats import atomic_path, atomic_write_text, check_new_file
    from ..core.identity.face_encoder import FaceEncoder
    from ..core.instruct.model import TASKS
    from ..core.models import load_pipeline, vae_fingerprint
    from ..core.progress import tqdm_progress
    from ..core.training.loop import loss_graph
    from .e4t_cli import output_path, resolved_argv
    from .settings import shared_pool_cache, training_device
    from .instruct import InstructTrainSettings, build_pool, load_pool, render_samples, save_pool, train_instruct

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    out = output_path(args.out, SUBDIR)
    for f in (out, out.with_suffix(".loss.png"), out.with_suffix(".json")):
        check_new_file(f, args.overwrite)  # fail before any work
    settings = InstructTrainSettings(tasks=tasks, steps=args.steps, batch_size=args.batch_size,
                                     learning_rate=args.lr, drop_p=args.drop_p, n_tokens=args.n_tokens,
                                     lora_rank=args.lora_rank, seed=args.seed, id_weight=args.id_weight,
                                     identity_p=args.identity_p, identity_weight=args.identity_weight,
                                     identity_adapter=(str(existing_model(args.identity_adapter, "identity",
                                                                          "--identity-adapter"))
                                                       if args.identity_adapter else None),
                                     checkpoint_every=args.checkpoint_every, seconds=args.seconds,
                                     init_from=str(output_path(args.init_from, SUBDIR)) if args.init_from else None,
                                     rebase=args.rebase)
    settings.check()
    if settings.init_from and not Path(settings.init_from).is_file():
        raise SystemExit(f"--init-from {args.init_from}: no instruction model at {settings.init_from}")
    base = load_pipeline(args.base, device=training_device(args.device), dtype="fp32")
    face_encoder = FaceEncoder.load(args.face_encoder)
    face_encoder.net.to(next(base.pipe.unet.parameters()).device)  # frozen; it encodes the pool
    size = base.native_size
    # the cache holds VAE tokens and face-encoder embeddings: another VAE or face encoder must not reuse it
    pool_seed = args.seed if args.pool_seed is None else args.pool_seed
    patch_pool = 4 if settings.identity_adapter else 0  # the shipped adapter's pooling (checked in training)
    source = (f"synthface train instruct per_task={args.per_task} seed={pool_seed} grid={settings.grid} "
              f"vae={vae_fingerprint(base.pipe)} face_encoder={face_encoder.fingerprint}"
              + (f" patch_pool={patch_pool}" if patch_pool else ""))
    cache = Path(args.pool_cache) if args.pool_cache else None
    with shared_pool_cache(cache):
        if cache is not None and cache.is_file():
            pool = load_pool(cache)
            if pool.source_name != source:
                raise SystemExit(f"--pool-cache {cache} holds another pool ({pool.source_name!r}); this command wants "
                                 f"{source!r}: use another cache file")
        else:
            # a cache file is shared by runs on any subset of the tasks: it holds all three; without one only the
            # tasks trained are rendered (a task draws the same samples in any subset)
            images, samples = render_samples(args.per_task, pool_seed, size, workers=args.workers,
                                             tasks=TASKS if cache is not None else tasks)
            pool = build_pool(base, face_encoder, images, samples, grid=settings.grid,
                              progress=tqdm_progress("encode pool"), source_name=source, patch_pool=patch_pool)
            del images
            if cache is not None:
                save_pool(cache, pool)
    work_dir = args.work_dir or str(Path(".cache") / "train-instruct" / out.stem)
    model, result = train_instruct(base, face_encoder, pool, settings, work_dir=work_dir, resume=not args.no_resume,
                                   progress=tqdm_progress("train instruction model"))
    model.info["command"] = "facesmith train instruct " + " ".join(
        shlex.quote(a) for a in resolved_argv(sys.argv[3:], model.info["steps"]))
    model.info["base_model"] = args.base
    model.save(out, overwrite=args.overwrite, dtype=torch.float16)  # weights stored in float16 (half the file)
    from PIL import Image

    with atomic_path(out.with_suffix(".loss.png"), args.overwrite) as tmp:
        Image.fromarray(loss_graph(result.loss_history, title=f"instruction model {out.stem}")).save(tmp, "PNG")
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        dict(model.info, base_name=model.base_name, base_fingerprint=model.base_fingerprint,
             loss_history=[round(x, 5) for x in result.loss_history]), indent=1), overwrite=args.overwrite)
    print(f"saved {out} ({result.steps_done} steps, final loss {model.info['final_loss']})")
    return 0
