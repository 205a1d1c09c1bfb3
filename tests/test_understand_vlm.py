"""The VLM backend (issue 17): a tiny random LLaVA built from transformers configs, loaded strictly offline with
the folder and size checks, LoRA-trained on SynthFace VQA by `facesmith train face-vqa --backend vlm`'s function on
the one loop: the loss falls and held-out accuracy rises."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny(facesmith, tmp_path_factory):
    torch.set_num_threads(1)
    from facesmith.core.understand.tiny_vlm import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("vlm") / "tiny-llava", seed=0)


def test_vlm_folder_checks_name_missing_files_and_size(tiny, tmp_path, monkeypatch):
    from facesmith.core.memory import MemoryLimitExceeded
    from facesmith.core.understand.vlm import VLMFolderError, check_vlm_folder, check_vlm_size

    assert check_vlm_folder(tiny) == tiny
    empty = tmp_path / "half"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(VLMFolderError, match="missing: model.safetensors.*preprocessor_config.json or processor"):
        check_vlm_folder(empty)
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(VLMFolderError, match="only pickled weights"):
        check_vlm_folder(empty)
    monkeypatch.setenv("FACESMITH_MAX_MEMORY", "1M")
    with pytest.raises(MemoryLimitExceeded, match="tiny-llava: the model needs about"):
        check_vlm_size(tiny)


def test_lora_on_tiny_llava_learns_face_vqa(tiny, tmp_path):
    from facesmith.core.understand.data import build_pool
    from facesmith.core.understand.vlm import load_vlm_understander
    from facesmith.trainers.understand_vlm import train_vlm_lora, vqa_rows

    types = ["background", "glasses"]
    pool = build_pool("train", 30, 2, seed=1, workers=1)
    held = build_pool("heldout", 16, 2, seed=2, workers=1)

    def accuracy(und):
        images, qs, answers = vqa_rows(held, np.random.default_rng(5), 32, types)
        return float(np.mean([a.text == w for a, w in zip(und.answer(images, qs, max_new_tokens=3), answers)]))

    before = accuracy(load_vlm_understander(tiny))
    out = tmp_path / "lora.safetensors"
    info = train_vlm_lora(tiny, out, steps=40, lr=1e-2, pool=pool, types=types, batch_size=12,
                          work_dir=str(tmp_path / "work"))
    hist = info["loss_history"]
    assert np.mean(hist[-5:]) < 0.3 * np.mean(hist[:5])
    after = accuracy(load_vlm_understander(tiny, out))  # reloaded from the safetensors file
    assert before < 0.1 and after > 0.6, (before, after)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps"] == 40 and meta["rank"] == 8
