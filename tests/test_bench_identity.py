"""``facesmith bench identity``: the issue's keys for every method, s.e. over identities, paired comparisons, goals
computed from the figures, and shards that equal a single run (a tiny run with an untrained adapter: mechanics, not
quality)."""
import math

import torch


def test_identity_bench_keys_pairing_and_shards(facesmith):
    from facesmith.core.bench import identity as bench
    from facesmith.core.bench.base import load_builtin_base
    from facesmith.core.identity.adapter import new_adapter
    from facesmith.core.identity.face_encoder import ARCH, FaceEncoder
    from facesmith.core.judges.nets import RecognizerNet

    torch.manual_seed(0)
    bp = load_builtin_base()
    fe = FaceEncoder(RecognizerNet(ARCH["dim"], tuple(ARCH["widths"]), tuple(ARCH["blocks"])), 0.5, {}, None)
    ad = new_adapter(bp, fe)
    adapters = {m: ad for m in bench.ADAPTERS}
    methods = ("adapter_1ref", "adapter_4ref", "adapter_no_mix", "adapter_1ref_no_words", "words_only", "no_identity")
    records = bench.collect(2, 2, bp=bp, adapters=adapters, methods=methods, k=1, eval_steps=2)
    out = bench.summarize(records)
    for m in methods:
        row = out[m]
        for key in ("identity_similarity", "verification_rate", "attribute_adherence", "reference_leak",
                    "diversity", "seconds_per_identity"):
            assert key in row and (isinstance(row[key], float) or row[key] == 0), (m, key)
        assert row["n_identities"] == 2 and row["n_images"] == 2 * 4 * 2
        assert math.isfinite(row["identity_similarity_sem"])
        assert 0 <= row["diversity"] <= 1
        # likeness to the person: against N_GALLERY renders that no method is given
        assert -1 <= row["identity_similarity_gallery"] <= 1 and 0 <= row["verification_rate_gallery"] <= 1
        assert math.isfinite(row["identity_similarity_gallery_sem"])
    assert out["no_identity"]["seconds_per_identity"] == 0.0
    assert out["adapter_1ref"]["seconds_per_identity"] > 0
    # same adapter under two names, same identities and seeds: the paired difference is exactly zero
    comp = out["comparisons"]["no_mix_worse"]
    assert comp["difference"] == 0.0 and comp["over_2_sem"] is False
    assert out["goals"]["no_mix_worse"] is False
    assert "adapter_1ref_verification_ge_0.60" in out["goals"]
    # 4 references against 1 is judged on the unseen renders; the reference-photo comparison is kept beside it
    assert "identity_similarity_gallery" in out["comparisons"]["4ref_beats_1ref"]
    assert {"4ref_beats_1ref", "4ref_beats_1ref_on_the_reference_photo"} <= set(out["goals"])
    # the adapter rows read the face model's words, adapter_1ref_no_words does not: what the words add is compared
    assert "words_add" in out["comparisons"] and "adapter_1ref_minus_words_only" in out["comparisons"]
    assert out["words_only"]["seconds_per_identity"] > 0  # reading the words is timed
    # a shard computes exactly what the single run computed for its identities
    second = bench.collect(2, 2, bp=bp, adapters=adapters, methods=("adapter_1ref", "no_identity"), k=1,
                           eval_steps=2, shard=(1, 2))
    assert [r["index"] for r in second] == [1]
    for m in ("adapter_1ref", "no_identity"):
        for key in ("sims", "gallery_sims"):
            assert second[0]["methods"][m][key] == records[1]["methods"][m][key]
