"""``facesmith assets --build --jobs N``: each built-in asset is built after the assets its commands read, up to N
at once; the first failure stops new starts. Checked with stand-in builds (the real ones train for minutes to
hours), and the recorded commands are checked for what the parallel builds rely on."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from facesmith.core import assets as A


def _asset(name, *needs):
    return A.Asset(name, name, Path("/nonexistent") / name, [["noop"]], tuple(needs))


def _recorder(fail=()):
    events, lock = [], threading.Lock()

    def run(a):
        with lock:
            events.append(("start", a.name))
        time.sleep(0.2)
        if a.name in fail:
            raise RuntimeError(f"{a.name} broke")
        with lock:
            events.append(("end", a.name))
    return events, run


def test_builds_after_what_each_asset_needs_and_in_parallel():
    todo = [_asset("adapter", "base", "face"), _asset("instruct", "base", "face"), _asset("base"),
            _asset("face"), _asset("judges"), _asset("e4t", "base", "elsewhere")]  # "elsewhere": already there
    events, run = _recorder()
    A.build_in_order(todo, jobs=3, run=run)
    at = {e: i for i, e in enumerate(events)}
    assert len(events) == 2 * len(todo)
    for a in todo:
        for need in a.needs:
            if need != "elsewhere":
                assert at[("end", need)] < at[("start", a.name)], (need, a.name)
    running = peak = 0
    for kind, _ in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 3  # base, face and judges at once


def test_the_first_failure_stops_new_starts():
    events, run = _recorder(fail=("base",))
    with pytest.raises(RuntimeError, match="base broke"):
        A.build_in_order([_asset("base"), _asset("judges"), _asset("e4t", "base")], jobs=2, run=run)
    assert ("end", "judges") in events  # the build already running finished
    assert ("start", "e4t") not in events
    with pytest.raises(RuntimeError, match="need each other"):
        A.build_in_order([_asset("a", "b"), _asset("b", "a")], jobs=2, run=run)


def test_recorded_commands_share_pools_and_need_the_base():
    by_name = {a.name: a for a in A.assets()}
    assert len(by_name) == len(A.assets())
    for group, cache in (("identity-adapter", ".cache/train-identity/pool-2400x5.safetensors"),
                         ("instruct", ".cache/train-instruct/pool-10000.safetensors")):
        members = [a for n, a in by_name.items() if n.startswith(group)]
        assert len(members) >= 3
        shared = None
        for a in members:
            assert set(a.needs) == {"base", "face-encoder"}
            caches = {step[step.index("--pool-cache") + 1] for step in a.build_steps}
            assert cache in caches
            shared = shared or caches
            assert caches == shared  # the group's trainings share their pools (a later stage may use another)
            outs = {step[step.index("--out") + 1] for step in a.build_steps}
            assert outs == {str(a.marker)}  # every stage writes the asset's own file
    assert by_name["domain-encoder"].needs == ("base",)


def test_a_failed_command_names_itself_and_its_log(tmp_path):
    log_file = tmp_path / "logs" / "broken.log"
    broken = A.Asset("broken", "broken", tmp_path / "never", [["no-such-command"]])
    with pytest.raises(RuntimeError, match=r"building broken failed \(exit 2\): facesmith no-such-command"):
        A.build(broken, log_file)
    text = log_file.read_text()
    assert text.startswith("$ facesmith no-such-command") and "invalid choice" in text
