"""``facesmith synthface export DIR --count N``: write a SynthFace dataset folder."""
from __future__ import annotations

from ..progress import tqdm_progress
from .dataset import export


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="write images + metadata.jsonl (the format trainers accept)")
    e.add_argument("dir", help="output folder (files in it are never replaced unless --overwrite)")
    e.add_argument("--count", type=int, required=True)
    e.add_argument("--split", default="train", choices=["train", "val", "heldout"])
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--mention-p", type=float, default=1.0, help="probability that a caption names each attribute")
    e.add_argument("--overwrite", action="store_true",
                   help="replace existing images/metadata in DIR (without it, any clash stops the export first)")


def main(args) -> int:
    out = export(args.dir, args.count, args.split, args.size, args.seed, args.mention_p,
                 progress=tqdm_progress("synthface export"), overwrite=args.overwrite)
    print(f"wrote {args.count} {args.split} samples to {out}")
    return 0
