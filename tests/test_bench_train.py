"""``facesmith bench train``: the loop and the bare diffusers + peft loop train the same thing, timed side by side."""
from __future__ import annotations

import pytest

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)


@pytest.mark.slow
def test_bench_train_compares_the_loop_with_a_bare_loop_on_the_same_training():
    from facesmith.core.bench import train as bench_train
    from facesmith.core.bench.harness import BENCHMARKS

    assert "train" in BENCHMARKS
    m = bench_train.run(batch=2, steps=2, warmup=1, repeats=2)
    for key in ("loop_seconds_per_step", "bare_seconds_per_step", "ratio", "samples_per_second",
                "peak_memory_bytes"):
        assert isinstance(m[key], (int, float)) and m[key] > 0, key
    assert m["ratio"] == pytest.approx(m["loop_seconds_per_step"] / m["bare_seconds_per_step"])
    assert m["samples_per_second"] == pytest.approx(2 / m["loop_seconds_per_step"])
    assert len(m["ratio_per_repeat"]) == 2
    # a fair comparison: both loops computed the same training from the same start
    assert m["max_abs_weight_difference_loop_vs_bare"] < 0.01 * m["max_abs_weight_change_in_training"]
