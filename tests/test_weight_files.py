"""Weight files from anywhere are checked before anything is allocated: integer/bool/NaN/Inf tensors, wrong shapes,
missing keys, absurd metadata sizes and broken headers are refused with the file and the key named (issue 19)."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models  # noqa: F401  (makes the pack importable as ``facesmith``)
from facesmith.core import formats
from facesmith.core.concept.concept import Concept
from facesmith.core.concept.encoder import DomainEncoder, E4TEncoder, EncoderConfig
from facesmith.core.concept.export import load_concept, save_concept

LORA_PATH = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _encoder() -> DomainEncoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=32, feature_channels=[4, 8], vae_blocks=[0], unet_blocks=[0], use_latent=False,
                        use_mid=False, hidden=16)
    lora = {LORA_PATH: (torch.randn(2, 32) * 0.01, torch.randn(32, 2) * 0.01)}
    return DomainEncoder(encoder=E4TEncoder(cfg), class_embedding=torch.randn(1, 32), lora=lora, lora_rank=2,
                         lora_alpha=2.0, base_name="b", base_fingerprint="f")


@pytest.fixture
def encoder_file(tmp_path):
    path = tmp_path / "enc.safetensors"
    _encoder().save(path)
    return path


def _rewrite(path, change_tensors=None, change_meta=None):
    """Rewrite a safetensors file with changed tensors/metadata (what a damaged or foreign file looks like)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    path.unlink()
    save_file(tensors, str(path), metadata=meta)
    return path


def _no_huge_allocations(monkeypatch):
    """Make the test itself safe: a Linear layer of more than 10^8 weights raises instead of allocating."""
    real = torch.nn.Linear.__init__

    def guarded(self, in_features, out_features, *a, **k):
        if in_features * out_features > 10 ** 8 and torch.empty(0).device.type != "meta":
            raise MemoryError(f"test guard: Linear({in_features}, {out_features}) would be allocated")
        real(self, in_features, out_features, *a, **k)

    monkeypatch.setattr(torch.nn.Linear, "__init__", guarded)


def test_a_good_encoder_file_round_trips(encoder_file):
    back = DomainEncoder.load(encoder_file)
    assert back.lora_rank == 2 and back.cfg.hidden == 16 and back.lora[LORA_PATH][0].shape == (2, 32)


ENCODER_DAMAGE = {
    "integer weights": (lambda t: t.__setitem__("encoder.mlp.0.weight", t["encoder.mlp.0.weight"].to(torch.int32)),
                        "encoder.mlp.0.weight", "dtype I32"),
    "bool embedding": (lambda t: t.__setitem__("class_embedding", t["class_embedding"] > 0), "class_embedding",
                       "dtype BOOL"),
    "NaN embedding": (lambda t: t["class_embedding"].__setitem__((0, 3), float("nan")), "class_embedding", "NaN"),
    "Inf in the LoRA": (lambda t: t[f"lora.{LORA_PATH}.up"].__setitem__((1, 1), float("inf")),
                        f"lora.{LORA_PATH}.up", "NaN/Inf"),
    "wrong shape": (lambda t: t.__setitem__("encoder.mlp.2.weight", torch.zeros(16, 17)), "encoder.mlp.2.weight",
                    "shape"),
    "missing class_embedding": (lambda t: t.pop("class_embedding"), "class_embedding", "missing"),
    "LoRA rank differs from metadata": (lambda t: t.__setitem__(f"lora.{LORA_PATH}.down", torch.zeros(3, 32)),
                                        f"lora.{LORA_PATH}.down", "shape"),
}


@pytest.mark.parametrize("damage", list(ENCODER_DAMAGE))
def test_damaged_encoder_tensors_are_refused_naming_file_and_key(encoder_file, damage):
    change, key, words = ENCODER_DAMAGE[damage]
    _rewrite(encoder_file, change_tensors=change)
    with pytest.raises(ValueError) as info:
        DomainEncoder.load(encoder_file)
    msg = str(info.value)
    assert str(encoder_file) in msg and key in msg and words in msg


@pytest.mark.parametrize("field,value", [("hidden", 2_000_000), ("hidden", 2e6), ("dim", 0), ("n_vectors", 10 ** 9),
                                         ("feature_channels", [4, 10 ** 7]), ("pool", "many"), ("bogus", 1)])
def test_absurd_encoder_config_is_refused_before_allocating(encoder_file, monkeypatch, field, value):
    def change(meta):
        cfg = json.loads(meta["encoder_config"])
        cfg[field] = value
        meta["encoder_config"] = json.dumps(cfg)

    _rewrite(encoder_file, change_meta=change)
    _no_huge_allocations(monkeypatch)
    with pytest.raises(ValueError) as info:
        DomainEncoder.load(encoder_file)
    assert str(encoder_file) in str(info.value) and f"encoder_config.{field}" in str(info.value)


def test_header_too_large_names_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 2 ** 40) + b"{}")
    for load in (DomainEncoder.load, formats.load_safetensors, formats.read_safetensors_metadata,
                 lambda p: load_concept(p, token="<x>")):
        with pytest.raises(ValueError) as info:
            load(bad)
        assert str(bad) in str(info.value) and "header" in str(info.value)


def test_truncated_file_names_the_file(encoder_file):
    data = encoder_file.read_bytes()
    encoder_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as info:
        DomainEncoder.load(encoder_file)
    assert str(encoder_file) in str(info.value)


# ------------------------------------------------------------------------------------------------------ concepts
@pytest.fixture
def concept_files(tmp_path):
    c = Concept(token="<c>", embedding=torch.randn(1, 32), base_name="b", base_fingerprint="f", method="e4t",
                lora={LORA_PATH: (torch.randn(2, 32), torch.randn(32, 2))}, lora_rank=2, lora_alpha=2.0)
    return save_concept(c, tmp_path / "c.safetensors", tmp_path / "c_lora.safetensors")


CONCEPT_DAMAGE = {
    "integer embedding": ("emb", lambda t: t.__setitem__("emb_params", torch.ones(1, 32, dtype=torch.int64)),
                          "emb_params", "dtype I64"),
    "NaN embedding": ("emb", lambda t: t["emb_params"].__setitem__((0, 0), float("nan")), "emb_params", "NaN"),
    "absurd embedding shape": ("emb", lambda t: t.__setitem__("emb_params", torch.zeros(5000, 4)), "emb_params",
                               "shape"),
    "Inf in the LoRA": ("lora", lambda t: next(v for k, v in t.items() if k.endswith("lora_up.weight"))
                        .__setitem__((0, 0), float("inf")), "lora_up.weight", "NaN/Inf"),
    "bool LoRA": ("lora", lambda t: t.update({k: v > 0 for k, v in t.items() if k.endswith("lora_down.weight")}),
                  "lora_down.weight", "dtype BOOL"),
}


@pytest.mark.parametrize("damage", list(CONCEPT_DAMAGE))
def test_damaged_concept_files_are_refused_naming_file_and_key(concept_files, damage):
    which, change, key, words = CONCEPT_DAMAGE[damage]
    emb, lora = concept_files
    target = emb if which == "emb" else lora
    _rewrite(target, change_tensors=change)
    with pytest.raises(ValueError) as info:
        load_concept(emb, lora)
    msg = str(info.value)
    assert str(target) in msg and key in msg and words in msg


def test_a_good_concept_round_trips(concept_files):
    emb, lora = concept_files
    back = load_concept(emb, lora)
    assert back.token == "<c>" and back.lora_rank == 2 and torch.isfinite(back.embedding).all()
