"""``facesmith train identity-adapter``: train an IDAdapter-style identity adapter over SynthFace TRAIN identities.

Example::

    facesmith train identity-adapter --identities 2400 --views 5 --steps 1200 --out synthface-idadapter
    facesmith train identity-adapter ... --no-mix --out synthface-idadapter-no-mix        # ablation
    facesmith train identity-adapter ... --id-weight 0 --out synthface-idadapter-no-idloss # ablation

The result is ``<models>/facesmith/identity/<out>.safetensors`` (the adapter, its face encoder, metadata: base name
and fingerprint, hyper-parameters, steps, command) with ``.json`` (loss history) and ``.loss.png`` beside it.
Checkpoints go to ``--work-dir``; the same command again resumes from the newest. ``--pool-cache FILE`` keeps the
rendered pool and its base features, so ablations reuse them.
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

log = logging.getLogger("facesmith.train")

DEFAULT_BASE = "diffusers/synthface-base"


def add_arguments(p) -> None:
    p.add_argument("--identities", type=int, default=2400, help="SynthFace TRAIN identities in the pool")
    p.add_argument("--views", type=int, default=5, help="renders per identity (random attributes, pose, light)")
    p.add_argument("--workers", type=int, default=0, help="render processes (0 = one per CPU core)")
    p.add_argument("--pool-cache", default=None,
                   help="safetensors file caching the rendered pool and its base features (made if absent)")
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: a folder, or 'diffusers/<name>'")
    p.add_argument("--face-encoder", default=None,
                   help="the adapter's face encoder (default: models/facesmith/identity/face-encoder.safetensors)")
    p.add_argument("--out", required=True,
                   help="output name (<models>/facesmith/identity/NAME.safetensors), or a path ending .safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seconds", type=float, default=0.0,
                   help="if > 0: --steps becomes the number of steps that fit this many seconds here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--refs", type=int, default=4, help="references mixed per training row")
    p.add_argument("--no-mix", action="store_true",
                   help="ablation: one reference per row, the target image itself (no mixed features)")
    p.add_argument("--id-weight", type=float, default=0.5, help="weight of the face identity loss (0: ablation)")
    p.add_argument("--identity-p", type=float, default=0.0,
                   help="probability that a training caption names each visible identity trait in words (what "
                        "Apply Identity adds when a face model is connected); 0 = never")
    p.add_argument("--init-from", default=None,
                   help="continue from an earlier adapter file (same shape, base and face encoder), fresh schedule")
    p.add_argument("--rebase", action="store_true",
                   help="with --init-from: that adapter was trained on another base of the same shape (e.g. an "
                        "earlier stage of --base); continue it on --base (recorded in the output's .json)")
    p.add_argument("--id-t-max", type=int, default=600, help="identity loss only below this timestep")
    p.add_argument("--n-id", type=int, default=4, help="word vectors of the identity token")
    p.add_argument("--n-ctx", type=int, default=4, help="context tokens of the decoupled attention")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter's initialisation and of the batches")
    p.add_argument("--pool-seed", type=int, default=None,
                   help="seed of the rendered pool (default: --seed); a continuation (--init-from) can draw new "
                        "batches (--seed) from the same pool")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--work-dir", default=None, help="checkpoints (default .cache/train-identity/<out>)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --work-dir")
    p.add_argument("--device", default="auto", help="auto/cpu/cuda (under accelerate launch: each process's GPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def main(args) -> int:
    import torch

    from ..core.formats import atomic_path, atomic_write_text, check_new_file
    from ..core.identity.face_encoder import FaceEncoder
    from ..core.models import load_pipeline, native_size, vae_fingerprint
    from ..core.progress import tqdm_progress
    from ..core.training.loop import loss_graph
    from .e4t import synthface_images
    from .e4t_cli import output_path, resolved_argv
    from .settings import shared_pool_cache, training_device
    from .identity_adapter import (AdapterTrainSettings, FacePool, encode_renders, face_embeddings, load_renders,
                                   save_renders, train_identity_adapter)

    if args.threads:
        torch.set_num_threads(args.threads)
    out = output_path(args.out, "identity")
    for f in (out, out.with_suffix(".loss.png"), out.with_suffix(".json")):
        check_new_file(f, args.overwrite)  # fail before any work
    init_from = output_path(args.init_from, "identity") if args.init_from else None
    if init_from is not None and not init_from.is_file():
        raise SystemExit(f"--init-from {args.init_from}: no adapter file at {init_from}")
    if args.rebase and init_from is None:
        raise SystemExit("--rebase continues an earlier adapter on --base: it needs --init-from")
    base = load_pipeline(args.base, device=training_device(args.device), dtype="fp32")
    face_encoder = FaceEncoder.load(args.face_encoder)
    face_encoder.net.to(next(base.pipe.unet.parameters()).device)  # frozen; the identity loss runs through it
    size = native_size(base.pipe)
    pool_seed = args.seed if args.pool_seed is None else args.pool_seed
    # the cache holds VAE encodings: another VAE (a different base) must not reuse it
    source = (f"synthface train identities={args.identities} views={args.views} seed={pool_seed} "
              f"vae={vae_fingerprint(base.pipe)}")
    cache = Path(args.pool_cache) if args.pool_cache else None
    with shared_pool_cache(cache):
        if cache is not None and cache.is_file():
            images, ids, attrs, patches, stats, cached_source = load_renders(cache)
            if cached_source != source:
                raise SystemExit(f"--pool-cache {cache} holds another pool ({cached_source!r}); this command wants "
                                 f"{source!r}: use another cache file")
        else:
            images, ids, attrs = synthface_images(args.identities, args.views, pool_seed, size, args.workers)
            patches, stats = encode_renders(base, images, progress=tqdm_progress("encode pool"))
            if cache is not None:
                save_renders(cache, images, ids, attrs, patches, stats, source)
    pool = FacePool(face=face_embeddings(face_encoder, images, size), patches=patches, stats=stats,
                    identity=ids, attrs=attrs, source=source)
    del images
    settings = AdapterTrainSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                                    n_refs=args.refs, mix=not args.no_mix, id_weight=args.id_weight,
                                    id_t_max=args.id_t_max, n_id=args.n_id, n_ctx=args.n_ctx, seed=args.seed,
                                    checkpoint_every=args.checkpoint_every, seconds=args.seconds,
                                    identity_p=args.identity_p,
                                    init_from=str(init_from) if init_from else None, rebase=args.rebase)
    work_dir = args.work_dir or str(Path(".cache") / "train-identity" / out.stem)
    adapter, result = train_identity_adapter(base, face_encoder, pool, settings, work_dir=work_dir,
                                             resume=not args.no_resume,
                                             progress=tqdm_progress("train identity adapter"))
    adapter.info["command"] = "facesmith train identity-adapter " + " ".join(
        shlex.quote(a) for a in resolved_argv(sys.argv[3:], adapter.info["steps"]))
    adapter.info["base_model"] = args.base
    adapter.save(out, overwrite=args.overwrite)
    from PIL import Image

    with atomic_path(out.with_suffix(".loss.png"), args.overwrite) as tmp:
        Image.fromarray(loss_graph(result.loss_history, title=f"identity adapter {out.stem}")).save(tmp, "PNG")
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        dict(adapter.info, base_name=adapter.base_name, base_fingerprint=adapter.base_fingerprint,
             loss_history=[round(x, 5) for x in result.loss_history]), indent=1), overwrite=args.overwrite)
    print(f"saved {out} ({result.steps_done} steps, final loss {adapter.info['final_loss']})")
    return 0
