"""Exact resume for every trainer: N steps straight give bit-identical weights to the same run stopped twice (half
way, then at a random later step, both through the progress callback raising ``Interrupted``) and resumed each time
from its checkpoint. Tiny models and data, so each trainer takes seconds.

What makes it exact: every objective draws its batch from (seed, step), and a checkpoint keeps, besides weights,
optimizer, schedule and EMA, the global RNG states (dropout) and the fp16 GradScaler's state."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)

from facesmith.core.progress import Interrupted, Progress
from facesmith.core.training.loop import TrainConfig, latest_checkpoint, train

STEPS = 8
RANDOM_STOP = random.Random(19).randint(STEPS // 2 + 1, STEPS - 1)  # seeded: a failure names and repeats its step


def _stop_at(step: int) -> Progress:
    def on_update(done, total):
        if done == step:
            raise Interrupted(f"test stop at {step}")

    return Progress(on_update=on_update)


def _weights(objective) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, m in objective.modules().items() for k, v in m.state_dict().items()}


def assert_exact_resume(make_objective, config: TrainConfig, work_dir) -> None:
    """``make_objective()`` builds the same fresh objective every call (weights included)."""
    from dataclasses import replace

    straight = make_objective()
    ref = train(straight, replace(config, work_dir=None))
    cfg = replace(config, work_dir=str(work_dir))
    for stop in (STEPS // 2, RANDOM_STOP):
        with pytest.raises(Interrupted):
            train(make_objective(), cfg, _stop_at(stop))
        assert latest_checkpoint(work_dir).name == f"checkpoint-{stop}"
    resumed = make_objective()
    res = train(resumed, cfg)
    assert res.resumed_from == RANDOM_STOP and res.steps_done == STEPS
    assert res.loss_history == ref.loss_history, f"losses differ after a stop at {STEPS // 2} and {RANDOM_STOP}"
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bit-identical after stops at {STEPS // 2} and {RANDOM_STOP}: {different[:5]}"


# ------------------------------------------------------------------------------------------------------- the loop


class DropoutObjective:
    """Dropout draws from torch's global RNG: only a checkpoint that keeps the RNG state resumes it exactly."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))

    def modules(self):
        return {"model": self.model}

    def parameters(self):
        return list(self.model.parameters())

    def make_batch(self, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 4, generator=g)
        return x, x.sum(1, keepdim=True)

    def loss(self, batch, step):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x), y), {}


def test_loop_keeps_the_rng_state_for_dropout(tmp_path):
    assert_exact_resume(DropoutObjective, TrainConfig(steps=STEPS, learning_rate=0.01, log_every=0,
                                                      checkpoint_every=3, ema_decay=0.9), tmp_path / "w")


def test_grad_scaler_state_round_trips_through_a_checkpoint():
    """fp16 (a CUDA GPU) trains with a GradScaler whose scale and growth tracker must survive a resume; its state is
    written with the checkpoint and applied on resume (checked here with torch's CPU scaler)."""
    import types

    from facesmith.core.training.loop import random_state, restore_random_state

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    for value in (1.0, float("inf"), 1.0):  # an overflow halves the scale; a good step counts towards growth
        opt.zero_grad()
        scaler.scale((p * value).sum()).backward()
        scaler.step(opt)
        scaler.update()
    saved = random_state(types.SimpleNamespace(scaler=scaler))
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    restore_random_state(types.SimpleNamespace(scaler=fresh), saved)
    assert scaler.state_dict()["scale"] == 512.0 and scaler.state_dict()["_growth_tracker"] == 1
    assert fresh.state_dict() == scaler.state_dict()


# ------------------------------------------------------------------------------------------------------- trainers


def test_base_vae_objective_resumes_exactly(tmp_path):
    from dataclasses import replace

    from facesmith.trainers.base_model import BaseSettings, VaeObjective, _vae_config

    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)

    def make():
        torch.manual_seed(0)
        return VaeObjective(tiny_models._vae(), images, batch_size=2, seed=3)

    cfg = replace(_vae_config(BaseSettings(vae_steps=STEPS, vae_batch=2, seed=3), None), log_every=0,
                  checkpoint_every=3, warmup_steps=2)
    assert_exact_resume(make, cfg, tmp_path / "w")


def test_base_text_to_image_objective_resumes_exactly(tmp_path):
    from dataclasses import replace

    from facesmith.core.synthface.render import random_attributes
    from facesmith.core.synthface.splits import identities
    from facesmith.trainers.base_model import BaseSettings, TextToImageObjective, _text_to_image_config

    rng = np.random.default_rng(0)
    attrs = [random_attributes(rng) for _ in range(6)]
    ident = np.asarray(identities("train")[:6])
    latents = torch.randn(6, 8, 8, 8, generator=torch.Generator().manual_seed(0)).abs()

    def make():
        from diffusers import DDPMScheduler

        pipe = tiny_models.build_tiny_sd15(seed=0)
        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
        return TextToImageObjective(pipe.unet, pipe.text_encoder, pipe.tokenizer, sched, latents, attrs,
                                    ident, batch_size=2, seed=3, scaling=0.5)

    settings = BaseSettings(unet_steps=STEPS, unet_batch=2, seed=3)
    cfg = replace(_text_to_image_config(settings, None, ema=0.9), log_every=0, checkpoint_every=3, warmup_steps=2)
    assert_exact_resume(make, cfg, tmp_path / "w")


@pytest.fixture(scope="module")
def judge_pool():
    from facesmith.core.judges import data as jdata

    return jdata.training_pool(3, 2, seed=0)


@pytest.mark.parametrize("judge", ["attributes", "recognizer", "detector"])
def test_judge_objectives_resume_exactly(judge, judge_pool, tmp_path):
    from facesmith.core.judges import data as jdata
    from facesmith.core.judges.nets import AttributeNet, DetectorNet, RecognizerNet
    from facesmith.trainers import judges as tj

    def make():
        torch.manual_seed(0)
        if judge == "attributes":
            net = AttributeNet({k: len(v) for k, v in jdata.HEADS.items()}, (8, 8, 8, 8), (1, 1, 1, 1))
            return tj.AttributeObjective(net, judge_pool, batch_size=4, seed=3)
        if judge == "recognizer":
            net = RecognizerNet(16, (8, 8, 8, 8), (1, 1, 1, 1), input_size=112)
            return tj.RecognizerObjective(net, judge_pool, batch_size=4, seed=3)
        return tj.DetectorObjective(DetectorNet((8, 8, 8, 8, 8), 8), judge_pool, batch_size=2, seed=3)

    # the judges' own loop settings (tj._train_one), shortened
    cfg = TrainConfig(steps=STEPS, learning_rate=2e-3, weight_decay=1e-4, seed=3, ema_decay=0.995, warmup_steps=2,
                      log_every=0, checkpoint_every=3)
    assert_exact_resume(make, cfg, tmp_path / "w")


def test_domain_encoder_resumes_exactly(tmp_path):
    from facesmith.core.concept.encoder import EncoderConfig
    from facesmith.core.models import as_base_pipeline
    from facesmith.trainers.e4t import DomainTrainSettings, build_pool, synthface_images, train_domain_encoder

    base = as_base_pipeline(tiny_models.build_tiny_sd15(seed=0), name="tiny")
    imgs, ids, attrs = synthface_images(3, 2, seed=0, size=16, workers=1)
    pool = build_pool(base, imgs, ids, attrs, cfg=EncoderConfig.for_pipeline(base.pipe))
    s = DomainTrainSettings(steps=STEPS, batch_size=2, checkpoint_every=3, log_every=0, warmup_steps=2)
    work = str(tmp_path / "w")
    straight, ref = train_domain_encoder(base, pool, s, work_dir=None)
    for stop in (STEPS // 2, RANDOM_STOP):
        with pytest.raises(Interrupted):
            train_domain_encoder(base, pool, s, work_dir=work, progress=_stop_at(stop))
    resumed, res = train_domain_encoder(base, pool, s, work_dir=work)
    assert res.resumed_from == RANDOM_STOP and res.loss_history == ref.loss_history
    for k, v in straight.encoder.state_dict().items():
        assert torch.equal(v, resumed.encoder.state_dict()[k]), k
    for path, (down, up) in straight.lora.items():
        assert torch.equal(down, resumed.lora[path][0]) and torch.equal(up, resumed.lora[path][1]), path


def test_identity_adapter_resumes_exactly(tmp_path):
    from facesmith.core.identity.face_encoder import ARCH, FaceEncoder
    from facesmith.core.judges.nets import RecognizerNet
    from facesmith.core.models import as_base_pipeline
    from facesmith.trainers.e4t import synthface_images
    from facesmith.trainers.identity_adapter import AdapterTrainSettings, build_face_pool, train_identity_adapter

    base = as_base_pipeline(tiny_models.build_tiny_sd15(seed=0), name="tiny")
    torch.manual_seed(0)
    fe = FaceEncoder(RecognizerNet(ARCH["dim"], tuple(ARCH["widths"]), tuple(ARCH["blocks"])), 0.5, {}, None)
    imgs, ids, attrs = synthface_images(3, 3, seed=0, size=16, workers=1)
    pool = build_face_pool(base, fe, imgs, ids, attrs)
    s = AdapterTrainSettings(steps=STEPS, batch_size=2, n_refs=2, checkpoint_every=3, log_every=0, warmup_steps=2,
                             id_rows_max=2)
    work = str(tmp_path / "w")
    straight, ref = train_identity_adapter(base, fe, pool, s, work_dir=None)
    for stop in (STEPS // 2, RANDOM_STOP):
        with pytest.raises(Interrupted):
            train_identity_adapter(base, fe, pool, s, work_dir=work, progress=_stop_at(stop))
    resumed, res = train_identity_adapter(base, fe, pool, s, work_dir=work)
    assert res.resumed_from == RANDOM_STOP and res.loss_history == ref.loss_history
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert straight.adapter_id == resumed.adapter_id
