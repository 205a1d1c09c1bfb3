"""A checkpoint records the settings that shape training (the loop's and the objective's ``TrainConfig.recipe``);
resuming under other ones is refused with the differences and the flag that starts fresh, for the loop, ``train
domain-encoder`` (command line and node), ``train base`` and ``train judges``."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)

from facesmith.core.progress import Interrupted, Progress
from facesmith.core.training.checkpoints import RecipeMismatch
from facesmith.core.training.loop import TrainConfig, latest_checkpoint, train
from test_trainer_loop import LinearObjective


def _cfg(work, **kw):
    return TrainConfig(**{"steps": 6, "learning_rate": 0.05, "log_every": 0, "checkpoint_every": 3,
                          "work_dir": str(work), **kw})


def _stop_at(step):
    def on_update(done, total):
        if done == step:
            raise Interrupted("stop")

    return Progress(on_update=on_update)


def test_other_loop_or_objective_settings_are_refused_with_the_differences(tmp_path):
    train(LinearObjective(), _cfg(tmp_path, recipe={"batch_size": 16}))
    with pytest.raises(RecipeMismatch) as e:
        train(LinearObjective(), _cfg(tmp_path, learning_rate=0.1, recipe={"batch_size": 8}))
    text = str(e.value)
    assert "learning_rate: 0.05 in the checkpoint, 0.1 now" in text and "batch_size: 16 in the checkpoint, 8 now" in text
    assert "--no-resume" in text and "checkpoint-6" in text
    # what does not shape the weights may change, and a finished run continues with more steps
    res = train(LinearObjective(), _cfg(tmp_path, steps=9, log_every=5, checkpoint_every=2, recipe={"batch_size": 16}))
    assert res.resumed_from == 6 and res.steps_done == 9
    with pytest.raises(RecipeMismatch, match="past this run's 4 steps"):  # it would return 9 steps' weights as 4
        train(LinearObjective(), _cfg(tmp_path, steps=4, recipe={"batch_size": 16}))


def test_no_resume_starts_fresh_and_replaces_the_earlier_runs_checkpoints(tmp_path):
    train(LinearObjective(), _cfg(tmp_path, steps=12))
    fresh = LinearObjective()
    res = train(fresh, _cfg(tmp_path, learning_rate=0.1, resume=False))
    assert res.resumed_from == 0 and res.steps_done == 6
    ref = LinearObjective()
    train(ref, _cfg(None, learning_rate=0.1, work_dir=None))
    assert torch.equal(fresh.model.weight, ref.model.weight)
    # the earlier run's checkpoint-12 is gone: it can neither be resumed nor outrank this run's in pruning
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert json.loads((tmp_path / "checkpoint-6" / "state.json").read_text())["recipe"]["learning_rate"] == 0.1


def test_an_older_checkpoint_without_a_recipe_is_checked_on_its_loop_settings(tmp_path):
    train(LinearObjective(), _cfg(tmp_path))
    state_file = tmp_path / "checkpoint-6" / "state.json"
    state = json.loads(state_file.read_text())
    del state["recipe"]
    state_file.write_text(json.dumps(state))
    assert train(LinearObjective(), _cfg(tmp_path, steps=7, recipe={"x": 1})).resumed_from == 6
    with pytest.raises(RecipeMismatch, match="learning_rate"):
        train(LinearObjective(), _cfg(tmp_path, steps=8, learning_rate=0.2))


# ------------------------------------------------------------------------------------------------ domain encoder


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory):
    return tiny_models.save_tiny_sd15(tmp_path_factory.mktemp("base") / "tiny-sd15")


@pytest.mark.slow
def test_train_domain_encoder_command_refuses_other_settings(tiny_base_dir, tmp_path, capsys):
    from facesmith.core import cli

    out = tmp_path / "m.safetensors"
    argv = ["train", "domain-encoder", "--synthface", "--identities", "2", "--views", "2", "--steps", "2",
            "--batch-size", "2", "--workers", "1", "--base", str(tiny_base_dir), "--out", str(out), "--work-dir", str(tmp_path / "w")]
    assert cli.main(argv) == 0
    capsys.readouterr()
    # the case: the same output with --overwrite and another learning rate and batch size
    assert cli.main(argv + ["--overwrite", "--lr", "0.05", "--batch-size", "3"]) == 1
    err = capsys.readouterr().err
    assert "learning_rate: 0.002 in the checkpoint, 0.05 now" in err and "batch_size: 2 in the checkpoint, 3 now" in err
    assert "--no-resume" in err and "Traceback" not in err
    assert cli.main(argv + ["--overwrite", "--lr", "0.05", "--no-resume"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["hyper_parameters"]["learning_rate"] == 0.05 and meta["resumed_from"] == 0


def test_train_domain_encoder_node_names_the_resume_input(tmp_path):
    import importlib

    from facesmith.core import paths
    from facesmith.core.models import as_base_pipeline

    nodes = importlib.import_module("facesmith.nodes.concept_nodes")
    base = as_base_pipeline(tiny_models.build_tiny_sd15(), name="tiny")
    paths.set_models_dir(tmp_path / "models")
    try:
        def run(lr, resume, overwrite):
            return nodes.FaceSmithTrainDomainEncoder().train(
                base, "synthface", "", 2, 2, 2, 2, lr, 2, 1e-2, 1e-3, 0, "no", False, resume, "t-enc", overwrite)

        run(1e-3, True, False)
        with pytest.raises(ValueError, match="input 'resume' is on, but the checkpoint .*learning_rate: 0.001 in the "
                                             "checkpoint, 0.002 now.*turn 'resume' off"):
            run(2e-3, True, True)
        run(2e-3, False, True)
    finally:
        paths.set_models_dir(None)


# ---------------------------------------------------------------------------------------------------------- base


def test_train_base_refuses_other_settings_and_ignores_the_ones_that_do_not_shape_it(tmp_path):
    from facesmith.trainers import base_model as tb

    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    settings = tb.BaseSettings(vae_steps=2, vae_batch=2, pool=4)

    def vae():
        torch.manual_seed(0)
        return tiny_models._vae()

    def run(s, **kw):
        cfg = replace(tb._vae_config(s, tmp_path / "vae-ckpt", **kw), log_every=0)
        return train(tb.VaeObjective(vae(), images, s.vae_batch, seed=s.seed), cfg)

    run(settings)
    with pytest.raises(RecipeMismatch, match="vae_batch: 2 in the checkpoint, 3 now"):
        run(replace(settings, vae_batch=3))
    res = run(replace(settings, vae_steps=3, workers=4, vae_seconds=5.0, unet_seconds=9.0, unet_steps=1))
    assert res.resumed_from == 2 and res.steps_done == 3  # more steps continue; workers and budgets do not matter
    assert tb.unet_recipe(settings) == tb.unet_recipe(replace(settings, workers=3, unet_steps=7, unet_seconds=1.0))
    assert tb.unet_recipe(settings) != tb.unet_recipe(replace(settings, mention_p=0.5))
    # a finished VAE in the work dir is reused only under the settings it was trained with
    from facesmith.core.training.checkpoints import recipe_of

    record = {"steps": 2, "recipe": recipe_of(tb._vae_config(settings, None))}
    tb._check_finished_vae(tmp_path / "vae", record, replace(settings, workers=2))
    with pytest.raises(RecipeMismatch, match="learning_rate: 0.001 in the checkpoint, 0.01 now"):
        tb._check_finished_vae(tmp_path / "vae", record, replace(settings, lr=0.01))


def test_train_base_command_has_no_resume():
    import argparse

    from facesmith.trainers import base_cli, judges_cli

    for mod in (base_cli, judges_cli):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        assert p.parse_args(["--no-resume"]).no_resume is True


# -------------------------------------------------------------------------------------------------------- judges


def test_train_judges_refuses_a_checkpoint_of_other_settings(tmp_path):
    from facesmith.core.judges import data as jdata
    from facesmith.core.judges.nets import AttributeNet
    from facesmith.trainers import judges as tj

    pool = jdata.training_pool(2, 2, seed=0)

    def objective():
        torch.manual_seed(0)
        net = AttributeNet({k: len(v) for k, v in jdata.HEADS.items()}, (8, 8, 8, 8), (1, 1, 1, 1))
        return tj.AttributeObjective(net, pool, batch_size=2, seed=0)

    recipe = {"judge": "attributes", "pool_identities": 2, "per_identity": 2}
    with pytest.raises(Interrupted):
        tj._train_one(objective(), 6, 2e-3, 0, tmp_path / "w", _stop_at(3), recipe=recipe)
    with pytest.raises(RecipeMismatch, match="per_identity: 2 in the checkpoint, 4 now"):
        tj._train_one(objective(), 6, 2e-3, 0, tmp_path / "w", None, recipe=dict(recipe, per_identity=4))
    assert latest_checkpoint(tmp_path / "w").name == "checkpoint-3"  # refused before anything changed
    tj._train_one(objective(), 6, 2e-3, 0, tmp_path / "w", None, recipe=dict(recipe, per_identity=4), resume=False)
