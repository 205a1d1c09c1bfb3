"""``facesmith bench NAME --workers N``: the identities of a sharded benchmark in N spawned processes give the records
one process gives (each identity has its own random stream and seeds; each process loads the shipped models)."""
from __future__ import annotations

import pytest
import torch

from facesmith.core.assets import assets

pytestmark = [pytest.mark.slow,  # spawns processes that load the built-in models
              pytest.mark.skipif(not all(a.present for a in assets() if a.name in ("base", "judges", "instruct")),
                                 reason="built-in base / judges / instruction models not built")]


def _without_timings(records: list[dict]) -> list[dict]:
    return [{**r, "figures": {row: {k: v for k, v in fig.items() if "seconds" not in k}
                              for row, fig in r["figures"].items()}} for r in records]


def test_records_from_worker_processes_equal_one_process(facesmith):
    from facesmith.core.bench import instruct
    from facesmith.core.bench.harness import collect_in_shards, run_benchmark

    torch.set_num_threads(1)  # as each worker process
    kwargs = dict(n_identities=2, images_per_sample=1, steps=2, rows=("joint",))
    one = instruct.collect(**kwargs)
    two = collect_in_shards(instruct.collect, 2, **kwargs)
    assert [r["index"] for r in two] == [0, 1]
    assert _without_timings(two) == _without_timings(one)
    with pytest.raises(ValueError, match="--workers"):
        run_benchmark("base", workers=2)  # one-process benchmarks say so before any work
