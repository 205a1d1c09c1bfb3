"""MoE against dense over independent training runs (issue 17): pairs of unified face models, each pair one MoE and
its dense twin trained from scratch with the same recipe and seed, compared on ``bench understand``'s held-out
renders and questions. One pair of shipped models can only say how THOSE two runs differ; how far the architecture
matters shows over seeds, so this reports each pair's paired difference (standard error over identities), the mean
of the pairs' differences with its standard error over SEEDS (the training runs' spread), and the seed-averaged
difference paired over identities.

    python -m facesmith.core.bench.moe_replicates --json OUT moe-s0.safetensors:dense-s0.safetensors ...

The models are not shipped (each pair is a few MB and minutes of CPU); the commands that made them are in each
file's metadata and are copied into the output.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .stats import mean_sem
from .understand import heldout_pool, paired_difference, vqa_scores

COMPARED = ("dim", "layers", "heads", "expert_hidden", "stem", "stem_width", "grid", "image_size", "vocab_size",
            "n_codes", "max_len")  # what the two models of a pair must share


def _number(value):
    """A file's metadata holds numbers as text."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _check_pair(moe, dense, moe_path: str, dense_path: str) -> None:
    if not moe.model.cfg.moe or dense.model.cfg.moe:
        raise ValueError(f"a pair is MOE:DENSE; got {moe_path} (moe={moe.model.cfg.moe}) and {dense_path} "
                         f"(moe={dense.model.cfg.moe})")
    a, b = moe.model.cfg.to_dict(), dense.model.cfg.to_dict()
    differ = [k for k in COMPARED if a[k] != b[k]]
    if differ:
        raise ValueError(f"{moe_path} and {dense_path} differ in {', '.join(differ)}: not twins")


def compare(pairs: list[tuple[str, str]], quick: bool = False) -> dict:
    """``pairs``: (MoE file, dense file) per training seed. Figures over the visible types (``overall_visible``, what
    issue 17's goals read) and over all 19 (``vqa_accuracy``)."""
    from ..understand.infer import load_understander

    pool = heldout_pool(quick)
    rows, diffs = [], []
    for moe_path, dense_path in pairs:
        moe, dense = load_understander(moe_path), load_understander(dense_path)
        _check_pair(moe, dense, moe_path, dense_path)
        m_row, m_right = vqa_scores(moe, pool)
        d_row, d_right = vqa_scores(dense, pool)
        diffs.append(m_right - d_right)
        keep = ("overall_visible", "vqa_accuracy", "per_type")
        rows.append({"moe_file": str(moe_path), "dense_file": str(dense_path),
                     "trained": {k: {"seed": _number(u.info.get("seed")), "steps": _number(u.info.get("steps")),
                                     "command": u.info.get("command")} for k, u in (("moe", moe), ("dense", dense))},
                     "moe_gate": moe.model.cfg.gate,
                     "parameters": {"moe": moe.model.parameter_counts(), "dense": dense.model.parameter_counts()},
                     "moe": {k: m_row[k] for k in keep}, "dense": {k: d_row[k] for k in keep},
                     "moe_minus_dense": paired_difference(pool, m_right, d_right)})
    out = {"heldout": {"identities": int(len(set(pool.identity.tolist()))), "images": len(pool)}, "pairs": rows}
    for key in ("overall_visible", "vqa_accuracy"):
        m, s = mean_sem([r["moe_minus_dense"][key] for r in rows])
        out[f"mean_over_seeds_{key}"] = round(m, 4)
        out[f"mean_over_seeds_{key}_sem_over_seeds"] = round(s, 4) if s == s else None
    averaged = paired_difference(pool, np.mean(diffs, axis=0), np.zeros_like(diffs[0]))
    out["seed_averaged_paired_over_identities"] = averaged
    out["moe_ge_dense_over_seeds"] = out["mean_over_seeds_overall_visible"] >= 0
    return out


def main(argv=None) -> int:
    from ..formats import atomic_write_text
    from .harness import machine

    p = argparse.ArgumentParser(prog="python -m facesmith.core.bench.moe_replicates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", help="MOE.safetensors:DENSE.safetensors, one per training seed")
    p.add_argument("--json", dest="json_out", help="write the result here (refuses to overwrite without --force)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quick", action="store_true", help="30 held-out identities instead of 250")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    pairs = []
    for item in args.pairs:
        if item.count(":") != 1:
            p.error(f"{item!r}: write each pair as MOE.safetensors:DENSE.safetensors")
        pairs.append(tuple(item.split(":")))
    missing = [f for pair in pairs for f in pair if not Path(f).is_file()]
    if missing:
        p.error(f"no such model file: {', '.join(missing)}")
    result = {"benchmark": "moe_replicates", "machine": machine(), "metrics": compare(pairs, quick=args.quick)}
    text = json.dumps(result, indent=1)
    if args.json_out:
        atomic_write_text(args.json_out, text + "\n", overwrite=args.force)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
