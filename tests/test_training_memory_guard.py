"""The memory guard for training (issue 19): the training loop estimates parameters + gradients + AdamW state of the
trainable weights, the frozen weights and the batch's activations, and refuses a run estimated above the limit
before any step, naming the estimate, the limit and how to raise it."""
from __future__ import annotations

import pytest
import torch

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)

from facesmith.core import memory
from facesmith.core.training.loop import TrainConfig, train


class TinyObjective:
    """A small regression; ``batch_size`` only feeds the memory estimate (batches stay 8 rows)."""

    def __init__(self, batch_size=8, per_sample=None):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
        self.batch_size, self.per_sample, self.steps_run = batch_size, per_sample, 0
        if per_sample is not None:
            self.memory_estimate = lambda batch_size: batch_size * per_sample

    def modules(self):
        return {"model": self.model}

    def parameters(self):
        return list(self.model.parameters())

    def make_batch(self, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 4, generator=g)
        return x, x.sum(1, keepdim=True)

    def loss(self, batch, step):
        self.steps_run += 1
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(self.frozen(x)), y), {}


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(memory.ENV_MAX_MEMORY, raising=False)


def absurd():
    return TinyObjective(batch_size=1_000_000_000, per_sample=64 * 1024 ** 2)  # a billion samples of 64 MiB


def test_absurd_batch_is_refused_before_any_step(tmp_path):
    obj = absurd()
    with pytest.raises(memory.MemoryLimitExceeded) as info:
        train(obj, TrainConfig(steps=2, log_every=0, work_dir=str(tmp_path / "w")))
    assert obj.steps_run == 0 and not list((tmp_path / "w").glob("checkpoint-*"))
    msg = str(info.value)
    limit, _ = memory.memory_limit("cuda" if torch.cuda.is_available() else "cpu")
    assert memory.format_size(info.value.estimate) in msg and memory.format_size(limit) in msg
    assert "batch 1000000000" in msg and "--max-memory" in msg and memory.ENV_MAX_MEMORY in msg
    assert info.value.estimate >= 10 ** 9 * 64 * 1024 ** 2


def test_tiny_run_passes_and_the_estimate_counts_its_parts():
    obj = TinyObjective()
    res = train(obj, TrainConfig(steps=2, log_every=0, checkpoint_every=0))
    assert res.steps_done == 2 and obj.steps_run == 2
    est = memory.estimate_training_bytes(obj, obj.parameters())
    assert est["trainable"] == memory.ADAMW_COPIES * 5 * 4  # Linear(4, 1): 5 fp32 weights, 4 copies
    assert est["frozen"] == 20 * 4                          # Linear(4, 4) frozen: once
    assert est["activations"] == memory.TRAIN_ACTIVATION_FACTOR * (8 * 4 + 8) * 4  # from one make_batch
    assert est["total"] == est["trainable"] + est["frozen"] + est["activations"]


def test_env_var_raises_and_lowers_the_limit(monkeypatch):
    monkeypatch.setenv(memory.ENV_MAX_MEMORY, "1K")
    with pytest.raises(memory.MemoryLimitExceeded, match=f"set by {memory.ENV_MAX_MEMORY}=1K"):
        train(TinyObjective(), TrainConfig(steps=1, log_every=0, checkpoint_every=0))
    for raised in ("100000T", "0"):  # above the estimate (about 60 PiB); off
        monkeypatch.setenv(memory.ENV_MAX_MEMORY, raised)
        obj = absurd()
        assert train(obj, TrainConfig(steps=1, log_every=0, checkpoint_every=0)).steps_done == 1
        assert obj.steps_run == 1


def test_one_image_tuning_is_unchanged_by_the_guard(monkeypatch):
    """One-image tuning draws its batches from a generator held in the objective: the guard must estimate without
    drawing, so a tuning run gives the same concept with the guard on and off."""
    import numpy as np

    from facesmith.core.concept.encoder import untrained
    from facesmith.core.concept.personalize import embed_e4t
    from facesmith.core.synthface import base_model as bm
    from facesmith.core.models import as_base_pipeline

    torch.manual_seed(0)
    bp = as_base_pipeline(bm.make_pipeline(bm.build_components(0)), name="rand")
    enc = untrained(bp, n_vectors=1, rank=2, seed=0)
    image = np.full((64, 64, 3), 140, np.uint8)
    monkeypatch.setenv("FACESMITH_MAX_MEMORY", "0")  # guard off
    off = embed_e4t(enc, bp, image, token="<g>", steps=3, seed=0)
    monkeypatch.delenv("FACESMITH_MAX_MEMORY")        # guard on (machine default)
    on = embed_e4t(enc, bp, image, token="<g>", steps=3, seed=0)
    assert torch.equal(off.embedding, on.embedding)
