"""``facesmith train face-encoder``: the identity adapter's own face recognizer (see ``face_encoder.py``)."""
from __future__ import annotations

import json
import shlex
import sys


def add_arguments(p) -> None:
    p.add_argument("--out", default=None,
                   help="output file (default: <models>/facesmith/identity/face-encoder.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--identities", type=int, default=None, help="TRAIN identities in the pool (default 4000)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 900)")
    p.add_argument("--work-dir", default=".cache/train-face-encoder", help="checkpoints (resumed)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def main(args) -> int:
    import torch

    from ..core import paths
    from ..core.formats import safe_join
    from ..core.identity.face_encoder import FILE_NAME, SUBDIR
    from .face_encoder import build_face_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or safe_join(paths.models_root("facesmith"), f"{SUBDIR}/{FILE_NAME}")
    command = "facesmith train face-encoder " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    meta = build_face_encoder(out, work_dir=args.work_dir, seed=args.seed, overwrite=args.overwrite,
                              command=command, pool_identities=args.identities, steps=args.steps)
    print(json.dumps({"out": str(out), "threshold": meta["threshold"],
                      "held_out_verification": meta["held_out"]["verification_accuracy"]}))
    return 0
