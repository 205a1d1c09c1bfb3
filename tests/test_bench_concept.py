"""``facesmith bench concept``: the JSON the issue asks for, its goal checks, and that they can fail.

A small run (2 held-out identities, few steps) with the built-in base, judges and E4T encoder; the full-size figures
are in ``assets/models/facesmith/e4t/bench_concept_full.json`` (speed and quality targets live in benchmarks, not in
timed tests)."""
from __future__ import annotations

import json

import pytest

from facesmith.core.assets import assets

pytestmark = pytest.mark.skipif(
    not all(a.present for a in assets() if a.name in ("base", "judges", "domain-encoder")),
    reason="built-in base / judges / E4T encoder not built (facesmith assets --build)")

METHODS = ("e4t_0", "e4t_k", "textual_inversion", "untrained_encoder")
KEYS = ("identity_similarity", "verification_rate", "attribute_adherence", "seconds_per_concept", "bytes_per_concept")


@pytest.fixture(scope="module")
def small_run():
    from facesmith.core.bench import concept

    return concept.run(n_identities=2, images_per_prompt=1, k=3, ti_steps=10, measure_overhead=True)


def test_every_method_reports_the_issue_keys(small_run):
    for m in METHODS:
        row = small_run[m]
        for key in KEYS:
            assert key in row, (m, key)
        assert -1.0 <= row["identity_similarity"] <= 1.0
        assert 0.0 <= row["verification_rate"] <= 1.0 and 0.0 <= row["attribute_adherence"] <= 1.0
        assert row["seconds_per_concept"] > 0 and row["bytes_per_concept"] > 0
        assert set(row["per_attribute_adherence"]) == {"hair", "glasses", "hat", "expression"}
        assert row["n_images"] == 2 * 4  # identities x change prompts x images per prompt
    # E4T concepts carry the LoRA (kohya file), textual inversion only an embedding
    assert small_run["e4t_k"]["bytes_per_concept"] > 10 * small_run["textual_inversion"]["bytes_per_concept"]
    assert isinstance(small_run["generate_overhead"], float) and small_run["generate_seconds_with"] > 0
    json.dumps(small_run)


def test_goals_follow_from_the_figures(small_run):
    from facesmith.core.bench.concept import _worse

    e4t, ti, control = small_run["e4t_k"], small_run["textual_inversion"], small_run["untrained_encoder"]
    goals = small_run["goals"]
    assert goals["e4t_k_identity_ge_ti"] == (e4t["identity_similarity"] >= ti["identity_similarity"])
    assert goals["e4t_k_time_le_ti_over_20"] == (e4t["seconds_per_concept"] <= ti["seconds_per_concept"] / 20)
    assert goals["e4t_k_adherence_ge_ti"] == (e4t["attribute_adherence"] >= ti["attribute_adherence"])
    assert goals["untrained_worse"] == _worse(control, e4t)
    assert goals["overhead_lt_5pct"] == (small_run["generate_overhead"] < 0.05)


def test_measurably_worse_needs_a_gap_over_two_standard_errors():
    from facesmith.core.bench.concept import _worse

    method = {"identity_similarity": 0.10, "identity_similarity_sem": 0.01}
    assert _worse({"identity_similarity": 0.05, "identity_similarity_sem": 0.01}, method)      # gap 3.5 s.e.
    assert not _worse({"identity_similarity": 0.08, "identity_similarity_sem": 0.01}, method)  # gap 1.4 s.e.
    assert not _worse({"identity_similarity": 0.12, "identity_similarity_sem": 0.01}, method)  # control better
