"""Exact resume after ``kill -9`` (issue 19): a training in a subprocess, checkpointing every step, is killed with
SIGKILL at a random moment after its first checkpoint; a second run resumes from the work dir, skipping a
half-written checkpoint, and finishes with weights bit-identical to a straight run's.

The kill may land anywhere, mid-checkpoint included (the loop writes a ``.tmp-checkpoint-<step>`` folder and renames
it into place, so an interrupted write never looks like a checkpoint). On top of that a newer ``checkpoint-<step>``
with a truncated ``optimizer.pt`` is planted (what a copy or a disk without rename atomicity can leave): resuming must
pass over it to the newest complete one."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tiny_models  # noqa: F401  (registers the pack as ``facesmith`` and caps torch at one thread)

STEPS = 40

WORKER = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import tiny_models  # the pack as ``facesmith``, one torch thread
import torch
from safetensors.torch import save_file
from facesmith.core.progress import Progress
from facesmith.core.training.loop import TrainConfig, train

from test_exact_resume import DropoutObjective  # dropout draws from the global RNG

work_dir, out, pause = (None if sys.argv[2] == "-" else sys.argv[2]), sys.argv[3], float(sys.argv[4])
obj = DropoutObjective()
cfg = TrainConfig(steps=int(sys.argv[5]), learning_rate=0.01, log_every=0, checkpoint_every=1, ema_decay=0.9,
                  work_dir=work_dir)
res = train(obj, cfg, Progress(on_update=lambda done, total: time.sleep(pause)))  # slow enough to be killed
save_file({k: v.contiguous() for k, v in obj.model.state_dict().items()}, out + ".safetensors")
with open(out + ".json", "w") as f:
    json.dump({"resumed_from": res.resumed_from, "steps_done": res.steps_done, "loss_history": res.loss_history}, f)
'''


def _run(script, work_dir, out, pause=0.0, **kw):
    args = [sys.executable, str(script), str(Path(__file__).parent), str(work_dir) if work_dir else "-", str(out),
            str(pause), str(STEPS)]
    return subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc, what):
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{what} failed:\n{text[-3000:]}"


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_is_bit_identical(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    work = tmp_path / "work"

    straight = _run(script, None, tmp_path / "straight")
    _finish(straight, "the straight run")

    victim = _run(script, work, tmp_path / "victim", pause=0.05)
    deadline = time.time() + 120
    while not list(work.glob("checkpoint-*")):
        assert victim.poll() is None, f"the run ended before its first checkpoint:\n{victim.communicate()[0]}"
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))  # a random moment after the first checkpoint (steps take ~50 ms)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"seed {seed}: the run finished before the kill"
    complete = sorted((p for p in work.glob("checkpoint-*") if (p / "state.json").is_file()),
                      key=lambda p: int(p.name.split("-")[1]))
    assert complete, f"seed {seed}: no complete checkpoint after the kill"
    newest = int(complete[-1].name.split("-")[1])

    # a half-written newer checkpoint: state.json claims a step, optimizer.pt stops half way
    half = work / f"checkpoint-{newest + 1}"
    shutil.rmtree(half, ignore_errors=True)
    shutil.copytree(complete[-1], half)
    state = json.loads((half / "state.json").read_text())
    state["step"] = newest + 1
    (half / "state.json").write_text(json.dumps(state))
    opt = (half / "optimizer.pt").read_bytes()
    (half / "optimizer.pt").write_bytes(opt[: len(opt) // 2])

    resumed = _run(script, work, tmp_path / "resumed")
    _finish(resumed, f"seed {seed}: the resumed run")
    info = json.loads((tmp_path / "resumed.json").read_text())
    ref = json.loads((tmp_path / "straight.json").read_text())
    assert info["resumed_from"] == newest, f"seed {seed}: resumed from {info['resumed_from']}, not {newest}"
    assert info["steps_done"] == STEPS and info["loss_history"] == ref["loss_history"], f"seed {seed}"
    a, b = load_file(str(tmp_path / "straight.safetensors")), load_file(str(tmp_path / "resumed.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"seed {seed} (killed after step {newest}): not bit-identical: {different}"
