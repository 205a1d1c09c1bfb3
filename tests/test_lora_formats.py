"""LoRA files of other tools are read through diffusers' ``lora_state_dict``: the same weights saved in kohya format
(what FaceSmith writes and ComfyUI's LoraLoader reads), in diffusers' format (``save_lora_weights``, alpha in its
metadata) and as a bare peft state dict load to identical layers and change the tiny UNet identically."""
from __future__ import annotations

import pytest
import torch

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)

from facesmith.core.concept import load_concept
from facesmith.core.concept.export import lora_from_state_dict, lora_to_kohya
from facesmith.core.concept.file_checks import check_lora_file, load_checked
from facesmith.core.concept.lora import FusedLora, target_module_paths
from facesmith.core.formats import save_safetensors

RANK, ALPHA = 4, 2.0  # alpha != rank: every format must carry the real alpha


@pytest.fixture(scope="module")
def unet():
    return tiny_models.build_tiny_sd15(seed=0).unet.eval()


@pytest.fixture(scope="module")
def lora(unet):
    g = torch.Generator().manual_seed(1)
    out = {}
    for path in target_module_paths(unet):
        w = unet.get_submodule(path).weight
        out[path] = (torch.randn(RANK, w.shape[1], generator=g), torch.randn(w.shape[0], RANK, generator=g) * 0.1)
    return out


def _files(lora, tmp_path):
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    kohya = tmp_path / "kohya.safetensors"
    save_safetensors(kohya, lora_to_kohya(lora, ALPHA), {"ss_network_dim": str(RANK)})
    peft = {}
    for path, (down, up) in lora.items():
        peft[f"{path}.lora_A.weight"], peft[f"{path}.lora_B.weight"] = down, up
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path / "diffusers", unet_lora_layers=peft, weight_name="diffusers.safetensors",
        unet_lora_adapter_metadata={"r": RANK, "lora_alpha": ALPHA, "target_modules": ["to_q", "to_k", "to_v",
                                                                                       "to_out.0"]})
    bare = tmp_path / "peft.safetensors"  # a peft state dict of the UNet without any prefix or alpha
    save_safetensors(bare, peft, {})
    return kohya, tmp_path / "diffusers" / "diffusers.safetensors", bare


def test_kohya_diffusers_and_peft_files_load_identically(unet, lora, tmp_path):
    kohya, diffusers_file, bare = _files(lora, tmp_path)
    read = {}
    for name, f in (("kohya", kohya), ("diffusers", diffusers_file), ("peft", bare)):
        read[name] = lora_from_state_dict(load_checked(f), check_lora_file(f))
    assert read["kohya"][1:] == read["diffusers"][1:] == (RANK, ALPHA)
    assert read["peft"][1:] == (RANK, float(RANK))  # no alpha anywhere: alpha = rank, as peft and kohya assume
    for got, _, _ in read.values():
        assert set(got) == set(lora)
        for path, (down, up) in lora.items():
            assert torch.equal(got[path][0], down) and torch.equal(got[path][1], up)
    # the same offsets on the tiny UNet give the same output
    torch.manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 3, 32)
    outs = {}
    for name in ("kohya", "diffusers"):
        got, rank, alpha = read[name]
        with torch.no_grad(), FusedLora(got, alpha / rank).applied(unet):
            outs[name] = unet(x, t, ctx).sample
    with torch.no_grad():
        plain = unet(x, t, ctx).sample
    assert torch.equal(outs["kohya"], outs["diffusers"]) and not torch.equal(outs["kohya"], plain)


def test_load_concept_reads_a_diffusers_lora(lora, tmp_path):
    kohya, diffusers_file, _ = _files(lora, tmp_path)
    emb = tmp_path / "emb.safetensors"
    save_safetensors(emb, {"emb_params": torch.randn(1, 32)}, {})
    a = load_concept(emb, kohya, token="<x>")
    b = load_concept(emb, diffusers_file, token="<x>")
    assert (a.lora_rank, a.lora_alpha) == (b.lora_rank, b.lora_alpha) == (RANK, ALPHA)
    assert all(torch.equal(a.lora[p][i], b.lora[p][i]) for p in lora for i in (0, 1))


def test_text_encoder_and_other_layers_are_refused(lora):
    kohya = lora_to_kohya(lora, ALPHA)
    with pytest.raises(ValueError, match="text encoder"):
        lora_from_state_dict(kohya | {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
                                      torch.zeros(RANK, 32)})
    path = next(iter(lora)).replace("attn1.to_q", "ff.net.2")
    with pytest.raises(ValueError, match="not an SD-UNet attention projection"):
        lora_from_state_dict({f"unet.{path}.lora_A.weight": torch.zeros(RANK, 32),
                              f"unet.{path}.lora_B.weight": torch.zeros(32, RANK)})
    with pytest.raises(ValueError, match="unexpected LoRA key"):
        lora_from_state_dict({"something.weight": torch.zeros(2, 2)})
