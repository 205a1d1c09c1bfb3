"""The unified face model's objective on the one loop (core/training/loop.py): multi-turn VQA, captions and
caption -> image codes in every batch, cross-entropy on the answer/caption/code tokens plus the experts' load
balance term."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.synthface.captions import caption as make_caption
from ..core.synthface.captions import random_mention
from ..core.understand.data import FacePool, SequenceBuilder, encode_codes, random_qas, to_model_images
from ..core.understand.model import UnifiedFaceModel
from ..core.understand.questions import TYPES, WordTokenizer, values


class FaceVQAObjective:
    def __init__(self, model: UnifiedFaceModel, pool: FacePool, tok: WordTokenizer, batch_vqa: int = 48,
                 batch_caption: int = 8, batch_draw: int = 8, turns: int = 4, seed: int = 0,
                 types: list[str] | None = None):
        self.model, self.pool, self.tok = model, pool, tok
        self.batch_vqa, self.batch_caption, self.batch_draw, self.turns = batch_vqa, batch_caption, batch_draw, turns
        self.types = types  # question types asked (default: all)
        self.seed = seed  # batches are drawn from (seed, 41, key): a resumed run sees the same ones
        self.builder = SequenceBuilder(tok, model.n_image)
        self.codes = encode_codes(pool.images, model.codebook, model.cfg.grid) if batch_draw else None

    def modules(self):
        return {"model": self.model}

    def parameters(self):
        return list(self.model.parameters())

    def make_batch(self, key):
        """One sub-batch per task (VQA, captions, drawing), each padded to its own length."""
        rng = np.random.default_rng([self.seed, 41, key])
        n, b = len(self.pool), self.builder
        parts = []
        idx = rng.integers(0, n, self.batch_vqa)
        if len(idx):
            rows = [b.vqa_row(random_qas(rng, self.pool.attributes(i), self.pool.facts(i), self.turns,
                                               self.types)) for i in idx]
            parts.append(b.collate(rows, [0] * len(rows), to_model_images(self.pool.images[idx]),
                                   list(range(len(rows)))))
            parts[-1].labels = torch.from_numpy(self.pool.labels[idx])
        idx = rng.integers(0, n, self.batch_caption)
        if len(idx):
            rows = [b.caption_row(self.pool.caption(int(i))) for i in idx]
            parts.append(b.collate(rows, [0] * len(rows), to_model_images(self.pool.images[idx]),
                                   list(range(len(rows)))))
        idx = rng.integers(0, n, self.batch_draw)
        if len(idx):
            rows = [b.draw_row(make_caption(self.pool.attributes(int(i)), mention=random_mention(rng, 0.85)),
                               self.codes[int(i)]) for i in idx]
            parts.append(b.collate(rows, [1] * len(rows), None, []))
        return parts

    def loss(self, parts, step):
        """Token-weighted cross-entropy over all sub-batches + the experts' load-balance term."""
        total, count, aux, right, probe = 0.0, 0, 0.0, 0, 0.0
        device = self.model.codebook.device  # the loop placed the model (a GPU when there is one)
        for batch in parts:
            batch = batch.to(device)
            logits, a, patches = self.model(batch.tokens, batch.images, batch.image_at, batch.group, batch.cond,
                                             return_patches=True)
            if batch.labels is not None and self.model.probe is not None:
                heads = self.model.probe(patches.flatten(1)).split(list(self.model.cfg.probe_classes), dim=1)
                probe = sum(F.cross_entropy(h.float(), batch.labels[:, j]) for j, h in enumerate(heads)) / len(heads)
            mask = batch.targets != -100
            total = total + F.cross_entropy(logits[mask].float(), batch.targets[mask], reduction="sum")
            count += int(mask.sum())
            aux = aux + a
            with torch.no_grad():
                right += int((logits[mask].argmax(-1) == batch.targets[mask]).sum())
        ce = total / max(1, count)
        logs = {"ce": float(ce.detach()), "token_acc": right / max(1, count), "probe": float(probe.detach()) if torch.is_tensor(probe) else 0.0}
        return ce + self.model.cfg.aux_weight * aux + probe, logs


DEFAULTS = {"pool_identities": 4000, "per_identity": 3, "steps": 700, "lr": 2e-3, "batch_vqa": 48,
            "batch_caption": 8, "batch_draw": 8, "turns": 4, "dim": 128, "layers": 4, "expert_hidden": 128,
            "token_experts": 4, "seq_experts": 2, "n_codes": 256, "types": None, "warmup": 30, "stem": "conv4",
            "stem_width": 32, "gate": "prob", "init_from": None}


def train_unified(out_path, arch: str = "moe", seed: int = 0, work_dir: str | None = None, cache_dir: str | None = None,
                  progress=None, resume: bool = True, overwrite: bool = False, command="", workers: int = 0,
                  seconds: float = 0.0, checkpoint_every: int = 100, **settings) -> dict:
    """Render (or read the cached) TRAIN pool (``workers`` render processes, 0 = one per core), fit the generation
    codebook, train the unified model with the one loop (on a GPU when the machine has one) and write ``out_path``
    (safetensors + ``.json`` beside it with the recipe and the loss history, and a ``.loss.png``). ``seconds`` > 0:
    the step count is what fits that many seconds here (timed on a throwaway copy, then recorded as a plain count).
    ``command``: the command line to record, or a function of the step count that gives it."""
    import json
    import time
    from pathlib import Path

    from ..core.formats import atomic_write_text, check_new_file
    from ..core.training.loop import TrainConfig, fit_steps, loss_graph, train
    from ..core.understand.data import build_pool, kmeans_codebook
    from ..core.understand.model import ModelConfig, build_model
    from ..core.understand.weights import save_unified

    if arch not in ("moe", "dense"):
        raise ValueError(f"arch must be 'moe' or 'dense', got {arch!r}")
    s = dict(DEFAULTS, **{k: v for k, v in settings.items() if v is not None})
    out_path = Path(out_path)
    check_new_file(out_path, overwrite)
    t0 = time.time()
    pool = build_pool("train", s["pool_identities"], s["per_identity"], seed=seed, cache_dir=cache_dir,
                      workers=workers)
    t_pool = time.time() - t0
    tok = WordTokenizer.build(s["n_codes"])
    cfg = ModelConfig(vocab_size=tok.size, n_codes=s["n_codes"], code_offset=tok.code_offset, dim=s["dim"],
                      layers=s["layers"], expert_hidden=s["expert_hidden"], moe=arch == "moe",
                      token_experts=s["token_experts"], seq_experts=s["seq_experts"],
                      probe_classes=tuple(len(values(t)) for t in TYPES), stem=s["stem"],
                      stem_width=s["stem_width"], gate=s["gate"])
    model = build_model(cfg, seed)
    if s["init_from"]:  # continue an earlier model (its weights and codebook) with a fresh schedule
        from ..core.understand.weights import load_unified

        start, _, start_info = load_unified(s["init_from"])
        if json.dumps(start.cfg.to_dict(), sort_keys=True) != json.dumps(cfg.to_dict(), sort_keys=True):
            raise ValueError(f"--init-from {s['init_from']}: its architecture {start.cfg} is not this run's {cfg}")
        model.load_state_dict(start.state_dict())
        s["init_steps"] = int(start_info["steps"]) if str(start_info.get("steps", "")).isdigit() else None
    else:
        model.codebook.copy_(torch.from_numpy(kmeans_codebook(pool.images, s["n_codes"], cfg.grid, seed)))
    objective = FaceVQAObjective(model, pool, tok, s["batch_vqa"], s["batch_caption"], s["batch_draw"], s["turns"],
                                 seed, s["types"])
    def loop_config(steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, learning_rate=s["lr"], seed=seed, warmup_steps=s["warmup"],
                           lr_schedule="cosine", weight_decay=0.01, work_dir=work_dir, resume=resume,
                           checkpoint_every=checkpoint_every, log_every=25, recipe={"arch": arch, **s})

    if seconds > 0:
        import copy

        probe = copy.deepcopy(model)
        s["steps"] = fit_steps(lambda: FaceVQAObjective(probe, pool, tok, s["batch_vqa"], s["batch_caption"],
                                                        s["batch_draw"], s["turns"], seed, s["types"]),
                               loop_config(s["steps"]), seconds)
        del probe
    recipe = {"arch": arch, **s}
    config = loop_config(s["steps"])
    t1 = time.time()
    result = train(objective, config, progress)
    model.cpu().eval()
    counts = model.parameter_counts()
    if callable(command):
        command = command(result.steps_done)
    info = {"arch": arch, "seed": seed, "steps": result.steps_done, "command": command, "settings": recipe,
            "parameters": counts, "trained_on": f"SynthFace TRAIN identities ({len(set(pool.identity.tolist()))} "
            f"identities x {s['per_identity']} renders)", "train_seconds": round(time.time() - t1, 1),
            "pool_seconds": round(t_pool, 1)}
    save_unified(out_path, model, tok, info, overwrite=overwrite)
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(dict(info, loss_history=[round(x, 5) for x in
                                                                                       result.loss_history]),
                                                                indent=1) + "\n", overwrite=True)
    from PIL import Image

    from ..core.formats import atomic_path

    with atomic_path(out_path.with_suffix(".loss.png"), overwrite=True) as tmp:
        Image.fromarray(loss_graph(result.loss_history, title=f"face-vqa {arch}")).save(tmp, format="PNG")
    return info
