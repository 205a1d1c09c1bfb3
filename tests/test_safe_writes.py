"""No lost files: exports never replace what they did not write, atomic writers leave no temporary file behind on any
failure, and a folder in use by another process is refused with that process's id (issue 19)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

import tiny_models  # noqa: F401  (makes the pack importable as ``facesmith``)
from facesmith.core import formats
from facesmith.core.synthface import dataset


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _disk_full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------------------------------- synthface export
def test_export_refuses_to_overwrite_an_image_it_did_not_create(tmp_path, capsys):
    from facesmith.core import cli

    mine = tmp_path / "out" / "images" / "000001.png"
    mine.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(mine)
    before = mine.read_bytes()
    code = cli.main(["synthface", "export", str(tmp_path / "out"), "--count", "3", "--size", "32"])
    err = capsys.readouterr().err
    assert code != 0
    assert "000001.png" in err and "--overwrite" in err
    assert mine.read_bytes() == before
    assert _files(tmp_path / "out") == ["images/000001.png"]  # nothing written before the refusal


def test_export_overwrite_flag_replaces_and_a_fresh_folder_works(tmp_path, capsys):
    from facesmith.core import cli

    out = tmp_path / "out"
    assert cli.main(["synthface", "export", str(out), "--count", "2", "--size", "32"]) == 0
    assert _files(out) == ["images/000000.png", "images/000001.png", "metadata.jsonl"]
    assert cli.main(["synthface", "export", str(out), "--count", "2", "--size", "32"]) != 0
    assert "metadata.jsonl" in capsys.readouterr().err
    assert cli.main(["synthface", "export", str(out), "--count", "2", "--size", "32", "--seed", "5",
                     "--overwrite"]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and _files(out) == ["images/000000.png", "images/000001.png", "metadata.jsonl"]


def test_export_never_replaces_a_file_that_appears_while_it_runs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_sample = dataset.sample

    def sample_and_race(*a, **k):  # another program writes image 1 after the up-front check
        target = out / "images" / "000001.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"theirs")
        return real_sample(*a, **k)

    monkeypatch.setattr(dataset, "sample", sample_and_race)
    with pytest.raises(FileExistsError):
        dataset.export(out, 3, size=32)
    assert (out / "images" / "000001.png").read_bytes() == b"theirs"
    assert not (out / "metadata.jsonl").exists()
    assert not [p for p in _files(out) if p.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- atomic writers
@pytest.mark.parametrize("failing", ["write", "fsync", "publish"])
def test_atomic_writer_removes_its_temporary_file_on_every_failure(tmp_path, monkeypatch, failing):
    if failing == "write":
        def write_half(self, data):
            with open(self, "wb") as fh:
                fh.write(data[:3])
            _disk_full()
        monkeypatch.setattr(type(tmp_path), "write_bytes", write_half)
    elif failing == "fsync":
        monkeypatch.setattr(formats.os, "fsync", _disk_full)
    else:
        monkeypatch.setattr(formats.os, "link", _disk_full)
        monkeypatch.setattr(formats.os, "replace", _disk_full)
    with pytest.raises(OSError):
        formats.atomic_write_bytes(tmp_path / "out.bin", b"0123456789")
    assert _files(tmp_path) == []


def test_safetensors_writer_leaves_nothing_on_a_full_disk(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    def save_half(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 10)
        _disk_full()

    monkeypatch.setattr(safetensors.torch, "save_file", save_half)
    with pytest.raises(OSError):
        formats.save_safetensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
    assert _files(tmp_path) == []


def test_save_image_leaves_no_hidden_temporary_file_on_a_full_disk(tmp_path, monkeypatch):
    import torch

    from facesmith.core.runner import comfy_core_nodes as core

    def save_half(self, fp, *a, **k):
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG")
        _disk_full()

    monkeypatch.setattr(Image.Image, "save", save_half)
    with core.directories(str(tmp_path / "out"), str(tmp_path / "in"), str(tmp_path / "temp")):
        for _retry in range(3):
            with pytest.raises(OSError):
                core.SaveImage().save_images(torch.zeros(1, 8, 8, 3), "x")
    assert _files(tmp_path / "out") == []


def test_export_leaves_no_temporary_file_on_a_full_disk(tmp_path, monkeypatch):
    def save_half(self, fp, *a, **k):
        with open(fp, "wb") as fh:
            fh.write(b"\x89PNG")
        _disk_full()

    monkeypatch.setattr(Image.Image, "save", save_half)
    with pytest.raises(OSError):
        dataset.export(tmp_path / "out", 2, size=32)
    assert _files(tmp_path / "out") == []


def test_checkpoint_writer_leaves_no_temporary_folder_on_a_full_disk(tmp_path, monkeypatch):
    from facesmith.core.training import loop
    from test_trainer_loop import LinearObjective

    monkeypatch.setattr(loop.torch, "save", _disk_full)
    with pytest.raises(OSError):
        loop.train(LinearObjective(), loop.TrainConfig(steps=3, learning_rate=0.05, log_every=0, checkpoint_every=2,
                                                       work_dir=str(tmp_path / "w")))
    assert [p.name for p in (tmp_path / "w").iterdir()] == []


# ------------------------------------------------------------------------------------------------------ locks
def test_second_process_is_refused_with_the_owner_pid(tmp_path):
    from facesmith.core import locks

    folder = tmp_path / "work"
    with locks.folder_lock(folder, "training"):
        child = subprocess.run(
            [sys.executable, "-c", "import sys; from facesmith.core import locks\n"
             "try:\n    locks.folder_lock(sys.argv[1], 'export').__enter__()\n"
             "except locks.FolderLocked as e:\n    print(e); sys.exit(3)\n", str(folder)],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert child.returncode == 3, child.stderr
        assert f"process {os.getpid()}" in child.stdout and "training" in child.stdout
        with pytest.raises(locks.FolderLocked, match=str(os.getpid())):
            with locks.folder_lock(folder, "again"):
                pass
    assert not (folder / locks.LOCK_NAME).exists()  # released
    with locks.folder_lock(folder, "later"):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from facesmith.core import locks

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / locks.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": __import__("socket").gethostname(),
                                                      "what": "training"}))
    with locks.folder_lock(folder, "training"):
        assert locks.lock_owner(folder)["pid"] == os.getpid()


def test_a_waiting_lock_starts_when_the_holder_releases(tmp_path):
    """Trainings started together on one --pool-cache: the second waits while the first builds it."""
    from facesmith.core import locks
    from facesmith.trainers.settings import shared_pool_cache

    folder = tmp_path / "pools"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from facesmith.core import locks\n"
                               "with locks.folder_lock(sys.argv[1], 'building a pool'):\n"
                               "    print('held', flush=True); time.sleep(1.5)\n", str(folder)],
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.FolderLocked, match="building a pool"):
            with locks.folder_lock(folder, "no wait"):
                pass
        t0 = time.monotonic()
        with shared_pool_cache(folder / "pool.safetensors"):  # waits for the holder, then holds the folder
            assert time.monotonic() - t0 > 0.5  # the holder kept it 1.5 s after saying so
            assert locks.lock_owner(folder)["pid"] == os.getpid()
    finally:
        holder.kill()
    assert locks.lock_owner(folder) is None


def test_export_and_training_take_the_folder_lock(tmp_path):
    from facesmith.core import locks

    from facesmith.core.training import loop
    from test_trainer_loop import LinearObjective

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for folder in (tmp_path / "export", tmp_path / "work"):
            folder.mkdir()
            (folder / locks.LOCK_NAME).write_text(json.dumps({"pid": other.pid, "what": "another job",
                                                              "host": __import__("socket").gethostname()}))
        with pytest.raises(locks.FolderLocked, match=f"process {other.pid}"):
            dataset.export(tmp_path / "export", 1, size=32)
        with pytest.raises(locks.FolderLocked, match=f"process {other.pid}"):
            loop.train(LinearObjective(), loop.TrainConfig(steps=2, learning_rate=0.05, log_every=0,
                                                           work_dir=str(tmp_path / "work")))
        assert _files(tmp_path / "export") == [locks.LOCK_NAME]
    finally:
        other.kill()
        other.wait()
