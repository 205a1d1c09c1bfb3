"""The one trainer loop: it learns, checkpoints, resumes exactly after an interruption, and draws a loss graph."""
from __future__ import annotations

import torch

from facesmith.core.progress import Interrupted, Progress
from facesmith.trainers.loop import TrainConfig, latest_checkpoint, loss_graph, train

TRUE_W = torch.tensor([[2.0, -3.0, 0.5]])


class LinearObjective:
    """Fit y = x @ W^T; batches depend only on the step, so a resumed run sees the same data."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1, bias=False)

    def modules(self):
        return {"model": self.model}

    def parameters(self):
        return list(self.model.parameters())

    def make_batch(self, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 3, generator=g)
        return x, x @ TRUE_W.T

    def loss(self, batch, step):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x), y), {}


def test_loss_decreases_and_weights_converge():
    obj = LinearObjective()
    res = train(obj, TrainConfig(steps=200, learning_rate=0.05, log_every=0))
    assert res.steps_done == 200 and len(res.loss_history) == 200
    assert sum(res.loss_history[-10:]) < 0.01 * sum(res.loss_history[:10])
    assert torch.allclose(obj.model.weight.detach(), TRUE_W, atol=0.05)


def test_interrupt_keeps_checkpoint_and_resume_matches_uninterrupted(tmp_path):
    ref = LinearObjective()
    train(ref, TrainConfig(steps=30, learning_rate=0.05, log_every=0))

    def stop_at_12(done, total):
        if done == 12:
            raise Interrupted("user stop")

    obj = LinearObjective()
    cfg = TrainConfig(steps=30, learning_rate=0.05, log_every=0, work_dir=str(tmp_path), checkpoint_every=5)
    try:
        train(obj, cfg, Progress(on_update=stop_at_12))
        raise AssertionError("training should have been interrupted")
    except Interrupted:
        pass
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "checkpoint-12"
    resumed = LinearObjective()
    res = train(resumed, cfg)
    assert res.resumed_from == 12 and res.steps_done == 30 and len(res.loss_history) == 30
    assert torch.allclose(resumed.model.weight, ref.model.weight, atol=1e-6)


def test_ema_weights_are_used_at_the_end():
    obj = LinearObjective()
    res = train(obj, TrainConfig(steps=100, learning_rate=0.05, log_every=0, ema_decay=0.9))
    assert res.steps_done == 100
    assert torch.allclose(obj.model.weight.detach(), TRUE_W, atol=0.1)


def test_bad_config_is_rejected_with_its_name():
    for bad, word in ((TrainConfig(steps=-1), "steps"), (TrainConfig(learning_rate=0), "learning_rate"),
                      (TrainConfig(precision="fp8"), "precision")):
        try:
            bad.check()
            raise AssertionError("expected ValueError")
        except ValueError as exc:
            assert word in str(exc)


def test_loss_graph_draws_a_curve():
    img = loss_graph([1.0 / (i + 1) for i in range(100)])
    assert img.shape == (256, 512, 3) and img.dtype.name == "uint8"
    assert (img[:, :, 2] > 150).sum() > 100 and (img[:, :, 0] < 100).sum() > 100  # blue line drawn


def test_trains_when_called_under_inference_mode():
    """ComfyUI and the runner execute nodes under torch.inference_mode(); a training node must still learn."""
    obj = LinearObjective()
    with torch.inference_mode():
        res = train(obj, TrainConfig(steps=50, learning_rate=0.05, log_every=0))
    assert res.loss_history[-1] < res.loss_history[0]
