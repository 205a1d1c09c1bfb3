"""Damaged work dirs and interrupts: resume falls back to the newest complete checkpoint and says what it skipped and
why; Ctrl-C in a training command prints one line naming the checkpoint kept (issue 19, "Clear errors")."""
from __future__ import annotations

import json
import logging
import sys
import types

import pytest

import tiny_models  # noqa: F401  (makes the pack importable as ``facesmith``)
from facesmith.core.training import loop
from test_trainer_loop import LinearObjective


def _config(work, steps, **kw):
    return loop.TrainConfig(steps=steps, learning_rate=0.05, log_every=0, checkpoint_every=2, keep_checkpoints=3,
                            work_dir=str(work), **kw)


@pytest.fixture
def work(tmp_path):
    """A work dir with checkpoint-6, -8 and -10 of a finished 10-step run."""
    loop.train(LinearObjective(), _config(tmp_path / "w", 10))
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["checkpoint-10", "checkpoint-6", "checkpoint-8"]
    return tmp_path / "w"


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGES = {
    "truncated trainable.safetensors": (lambda c: _truncate(c / "trainable.safetensors"), "trainable.safetensors"),
    "empty trainable.safetensors": (lambda c: (c / "trainable.safetensors").write_bytes(b""), "trainable.safetensors"),
    "broken state.json": (lambda c: (c / "state.json").write_text('{"step": 10, "sched'), "state.json"),
    "state.json without step": (lambda c: (c / "state.json").write_text("{}"), "state.json"),
    "truncated optimizer.pt": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt"),
    "missing optimizer.pt": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_falls_back_to_the_newest_complete_checkpoint(work, damage, caplog):
    spoil, file_named = DAMAGES[damage]
    spoil(work / "checkpoint-10")
    (work / "checkpoint-old").mkdir()  # a stray folder someone left there
    (work / "checkpoint-old" / "state.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="facesmith.train"):
        res = loop.train(LinearObjective(), _config(work, 12))
    assert res.resumed_from == 8 and res.steps_done == 12
    text = caplog.text
    assert "checkpoint-10" in text and file_named in text  # which one was skipped, and why
    assert "checkpoint-old" in text
    assert (work / "checkpoint-old").is_dir()  # never pruned: it is not ours


def test_no_complete_checkpoint_fails_with_the_paths_and_no_resume(work):
    from facesmith.core.training import checkpoints

    for c in ("checkpoint-6", "checkpoint-8", "checkpoint-10"):
        _truncate(work / c / "optimizer.pt", 0.3)
    with pytest.raises(checkpoints.NoCompleteCheckpoint) as info:
        loop.train(LinearObjective(), _config(work, 12))
    msg = str(info.value)
    assert all(c in msg for c in ("checkpoint-6", "checkpoint-8", "checkpoint-10")) and "--no-resume" in msg
    res = loop.train(LinearObjective(), _config(work, 4, resume=False))  # starting fresh still works
    assert res.resumed_from == 0


def test_latest_checkpoint_ignores_stray_and_unfinished_folders(work):
    (work / "checkpoint-99").mkdir()  # unfinished: no state.json
    (work / "checkpoint-final").mkdir()
    assert loop.latest_checkpoint(work).name == "checkpoint-10"


def _fake_train_command(monkeypatch, work, stop_at):
    """``facesmith faketrain``: the training loop under the real command-line entry point, with a Ctrl-C at step
    ``stop_at``."""
    from facesmith.core import cli
    from facesmith.core.progress import Progress

    def ctrl_c(done, total):
        if done == stop_at:
            raise KeyboardInterrupt

    def main(args):
        loop.train(LinearObjective(), _config(work, 20), progress=Progress(on_update=ctrl_c))
        return 0

    mod = types.ModuleType("facesmith.core._faketrain")
    mod.add_arguments = lambda p: None
    mod.main = main
    monkeypatch.setitem(sys.modules, "facesmith.core._faketrain", mod)
    monkeypatch.setitem(cli.COMMANDS, "faketrain", ("core._faketrain", "test"))
    return cli


def test_ctrl_c_in_training_prints_one_line_with_the_checkpoint_kept(tmp_path, monkeypatch, capsys):
    cli = _fake_train_command(monkeypatch, tmp_path / "w", stop_at=5)
    assert cli.main(["faketrain"]) == 130
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.err
    assert "checkpoint kept" in lines[0] and str(tmp_path / "w" / "checkpoint-5") in lines[0]
    assert json.loads((tmp_path / "w" / "checkpoint-5" / "state.json").read_text())["step"] == 5


def test_ctrl_c_before_any_progress_says_nothing_was_kept(tmp_path, monkeypatch, capsys):
    cli = _fake_train_command(monkeypatch, tmp_path / "w", stop_at=0)
    assert cli.main(["faketrain"]) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nothing was kept" in err
