"""``facesmith train judges``: train the SynthFace judges (attribute judge, identity recognizer, face detector),
measure them on held-out identities and write the weights + the insightface ONNX pack."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..core.judges.common import BUILTIN_INSIGHTFACE_ROOT, BUILTIN_JUDGES_DIR, INSIGHTFACE_PACK
from ..core.progress import tqdm_progress


def add_arguments(p) -> None:
    from .judges import DEFAULTS

    p.add_argument("--out", default=str(BUILTIN_JUDGES_DIR),
                   help="folder for attributes/recognizer/detector.safetensors and README.md (default: the built-in "
                        "one)")
    p.add_argument("--onnx-out", default=None,
                   help="folder for the insightface pack (det/rec_synthface.onnx); default: the built-in "
                        "insightface/models/synthface when --out is the built-in folder, else OUT/insightface/models/"
                        "synthface; 'none' skips the ONNX export")
    p.add_argument("--work-dir", default=".cache/train-judges", help="render pool + checkpoints; a rerun resumes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace existing judge files")
    p.add_argument("--no-resume", action="store_true", help="start fresh: ignore the checkpoints in --work-dir")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the timings in README.md use 1)")
    p.add_argument("--pool-identities", type=int, default=DEFAULTS["pool_identities"],
                   help="TRAIN identities rendered for training")
    p.add_argument("--per-identity", type=int, default=DEFAULTS["per_identity"],
                   help="renders per identity (random attributes and views)")
    p.add_argument("--attr-steps", type=int, default=DEFAULTS["attr_steps"])
    p.add_argument("--rec-steps", type=int, default=DEFAULTS["rec_steps"])
    p.add_argument("--det-steps", type=int, default=DEFAULTS["det_steps"])
    p.add_argument("--eval-images", type=int, default=DEFAULTS["eval_images"], help="held-out renders for accuracy")
    p.add_argument("--readme-only", action="store_true",
                   help="only rewrite OUT/README.md from the judge files' metadata (no training)")
    p.add_argument("--eval-pairs", type=int, default=DEFAULTS["eval_pairs"], help="val/held-out verification pairs")


def main(args) -> int:
    import torch

    from .judges import build_judges, write_readme

    if args.readme_only:
        print(f"wrote {write_readme(args.out)}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.onnx_out is None:
        if out.resolve() == BUILTIN_JUDGES_DIR.resolve():
            onnx = BUILTIN_INSIGHTFACE_ROOT / "models" / INSIGHTFACE_PACK
        else:
            onnx = out / "insightface" / "models" / INSIGHTFACE_PACK
    elif args.onnx_out.lower() == "none":
        onnx = None
    else:
        onnx = Path(args.onnx_out)
    command = "facesmith " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train"] else ""
    summary = build_judges(
        out, onnx, Path(args.work_dir) if args.work_dir else None, seed=args.seed, overwrite=args.overwrite,
        progress_factory=tqdm_progress, command=command, resume=not args.no_resume,
        pool_identities=args.pool_identities, per_identity=args.per_identity, attr_steps=args.attr_steps,
        rec_steps=args.rec_steps, det_steps=args.det_steps, eval_images=args.eval_images,
        eval_pairs=args.eval_pairs)
    a, r = summary["attributes"], summary["recognizer"]
    print("attribute judge (held-out): " + ", ".join(f"{k} {v:.4f}" for k, v in a["per_attribute"].items())
          + f"; mean {a['attribute_mean']:.4f}")
    print("identity facts (held-out): " + ", ".join(f"{k} {v:.4f}" for k, v in a["per_fact"].items()))
    print(f"recognizer (held-out): verification accuracy {r['verification_accuracy']:.4f} at threshold "
          f"{summary['threshold']:.4f}")
    print(f"detector (held-out): {summary['detector']}")
    print(f"saved to {out}" + (f" and {onnx}" if onnx else ""))
    return 0
