"""``facesmith bench NAME --json OUT``: run one benchmark and write ``{"machine": ..., "metrics": {...}}``."""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from importlib import import_module
from pathlib import Path

from ..formats import atomic_write_text

log = logging.getLogger("facesmith.bench")

BENCHMARKS = {
    "base": "SynthFace judges and the tiny base model's prompt adherence",
    "concept": "E4T (0 and k tuning steps) vs textual inversion vs an untrained encoder on held-out identities",
    "identity": "identity adapter (1 and 4 references, ablations) vs E4T on held-out identities",
    "faces": "face pipeline on real photos shipped in wheels: detection rates, same face vs different people",
    "train": "step time of the one training loop vs a bare diffusers + peft loop (LoRA on the built-in base)",
    "instruct": "instruction generation / editing / subject editing: joint vs single-task models vs do-nothing",
    "understand": "face VQA per question type, caption recall and generation adherence on held-out identities",
}


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


SHARDED = ("concept", "identity", "instruct")  # benchmarks whose identities run in parallel processes (--workers)


def collect_in_shards(collect, workers: int, **kwargs) -> list[dict]:
    """A benchmark's per-identity records, ``collect(**kwargs)``, computed as ``workers`` shards
    (``shard=(i, workers)``) in as many processes that each load the shipped models themselves. The records equal
    one process's: every identity has its own random stream and seeds."""
    if workers <= 1:
        return collect(**kwargs)
    from ..workers import in_spawned_processes

    parts = in_spawned_processes([(collect, (), dict(kwargs, shard=(i, workers))) for i in range(workers)], workers)
    return sorted((r for part in parts for r in part), key=lambda r: r["index"])


def run_benchmark(name: str, quick: bool = False, workers: int = 1) -> dict:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    if workers > 1 and name not in SHARDED:
        raise ValueError(f"--workers: bench {name} runs in one process; --workers applies to {', '.join(SHARDED)}")
    module = import_module(f".{name}", __package__)
    t0 = time.time()
    metrics = module.run(quick=quick, **({"workers": workers} if workers > 1 else {}))
    return {"benchmark": name, "quick": quick, "seconds": round(time.time() - t0, 2), "machine": machine(),
            "metrics": metrics}


def add_arguments(p) -> None:
    p.add_argument("name", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    p.add_argument("--json", dest="json_out", help="write the result JSON here (refuses to overwrite without --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.add_argument("--quick", action="store_true", help="fewer samples (CI smoke run); figures are noisier")
    p.add_argument("--workers", type=int, default=1,
                   help=f"processes for the identities of {', '.join(SHARDED)} (one torch thread each; each loads "
                        "the models; the figures are those of one process)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: timings stay comparable on a busy machine; 0 = torch default)")


def main(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run_benchmark(args.name, quick=args.quick, workers=args.workers)
    text = json.dumps(result, indent=2)
    if args.json_out:
        atomic_write_text(args.json_out, text + "\n", overwrite=args.force)
        log.info("wrote %s", args.json_out)
    print(text)
    return 0
