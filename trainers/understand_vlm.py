"""LoRA on a local vision-language model for face VQA, on the one loop: SynthFace VQA rows (image, question in one
of its phrasings, answer words), cross-entropy on the answer tokens only. Only the LoRA weights (and, where the
model has one, the multimodal projector) train; checkpoints hold just those."""
from __future__ import annotations

import numpy as np
import torch

from ..core.understand.data import FacePool
from ..core.understand.questions import PHRASINGS, TYPES, answer_word, truth


class TrainableView(torch.nn.Module):
    """The trainable parameters of a big frozen model as one small module (what the loop checkpoints)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.params = torch.nn.ParameterList([p for p in model.parameters() if p.requires_grad])


def vqa_rows(pool: FacePool, rng: np.random.Generator, n: int, types: list[str] | None = None):
    types = types or TYPES
    idx = rng.integers(0, len(pool), n)
    qs, ans = [], []
    for i in idx:
        t = types[int(rng.integers(len(types)))]
        qs.append(PHRASINGS[t][int(rng.integers(len(PHRASINGS[t])))])
        ans.append(answer_word(t, truth(t, pool.attributes(int(i)), pool.facts(int(i)))))
    return pool.images[idx], qs, ans


class VLMLoraObjective:
    def __init__(self, peft_model, processor, pool: FacePool, batch_size: int = 16, seed: int = 0,
                 types: list[str] | None = None):
        self.model, self.processor, self.pool = peft_model, processor, pool
        self.batch_size, self.seed, self.types = batch_size, seed, types
        self.view = TrainableView(peft_model)

    def modules(self):
        return {"lora": self.view}

    def parameters(self):
        return list(self.view.parameters())

    def make_batch(self, key):
        from ..core.understand.vlm import encode_prompts

        rng = np.random.default_rng([self.seed, 43, key])
        images, qs, ans = vqa_rows(self.pool, rng, self.batch_size, self.types)
        return encode_prompts(self.processor, images, qs, ans)

    def memory_estimate(self, batch_size):
        return 64 << 20

    def loss(self, batch, step):
        self.model.train()
        out = self.model(**batch)
        return out.loss, {}


def train_vlm_lora(folder, out_path, seed: int = 0, steps: int = 200, lr: float = 1e-3, rank: int = 8,
                   work_dir: str | None = None, resume: bool = True, overwrite: bool = False, progress=None,
                   command: str = "", pool: FacePool | None = None, batch_size: int = 16,
                   train_projector: bool = True, types: list[str] | None = None) -> dict:
    """LoRA-train the VLM in ``folder`` on SynthFace VQA (TRAIN identities) and save the adapter to ``out_path``."""
    import json
    from pathlib import Path

    from ..core.formats import atomic_write_text, check_new_file
    from ..core.training.loop import TrainConfig, train
    from ..core.understand.data import build_pool
    from ..core.understand.vlm import add_lora, load_vlm, save_lora

    out_path = Path(out_path)
    check_new_file(out_path, overwrite)
    model, processor = load_vlm(folder)
    torch.manual_seed(seed)
    peft_model = add_lora(model, rank)
    if train_projector:
        for name, p in peft_model.named_parameters():
            if "multi_modal_projector" in name or "connector" in name:
                p.requires_grad_(True)
    if pool is None:
        pool = build_pool("train", 1000, 2, seed=seed, cache_dir=".cache")
    objective = VLMLoraObjective(peft_model, processor, pool, batch_size, seed, types)
    config = TrainConfig(steps=steps, learning_rate=lr, seed=seed, work_dir=work_dir, resume=resume,
                         checkpoint_every=max(1, steps // 4), log_every=max(1, steps // 10), warmup_steps=min(20, steps),
                         recipe={"folder": Path(folder).name, "rank": rank, "batch_size": batch_size,
                                 "projector": train_projector, "types": types or "all", "pool": len(pool)})
    result = train(objective, config, progress)
    peft_model.eval()
    info = {"seed": seed, "steps": result.steps_done, "command": command, "rank": rank,
            "projector_trained": train_projector}
    if train_projector:  # the projector's weights travel in the same file
        extra = {n: p.detach() for n, p in peft_model.named_parameters()
                 if "multi_modal_projector" in n or "connector" in n}
        info["projector_keys"] = len(extra)
    save_lora(out_path, peft_model, folder, info, overwrite=overwrite, extra=extra if train_projector else None)
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(dict(info, loss_history=result.loss_history),
                                                                indent=1) + "\n", overwrite=True)
    return dict(info, loss_history=result.loss_history, model=peft_model, processor=processor)
