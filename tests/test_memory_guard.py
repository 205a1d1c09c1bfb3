"""The memory guard: a Generate estimated to need more than the limit is refused before anything is allocated, with a
message naming the estimate, the limit and how to raise it (issue 19)."""
from __future__ import annotations

import argparse
import json

import pytest

import tiny_models
from facesmith.core import memory
from facesmith.core.generate import GenerateRequest, generate
from facesmith.core.models import as_base_pipeline


@pytest.fixture(scope="module")
def pipe():
    return as_base_pipeline(tiny_models.build_tiny_sd15(), name="tiny")


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(memory.ENV_MAX_MEMORY, raising=False)


def test_parse_size():
    assert memory.parse_size("24G") == 24 * 1024 ** 3
    assert memory.parse_size("512MiB") == 512 * 1024 ** 2
    assert memory.parse_size("1.5k") == 1536
    assert memory.parse_size("123") == 123
    for off in ("0", "off", "none", 0, None):
        assert memory.parse_size(off) is None
    for bad in ("lots", "-5G", "5X"):
        with pytest.raises(ValueError):
            memory.parse_size(bad)


def test_absurd_request_is_refused_before_running(pipe, monkeypatch):
    def must_not_run(*a, **k):
        raise AssertionError("the pipeline ran")

    monkeypatch.setattr(type(pipe.pipe), "__call__", must_not_run)
    req = GenerateRequest(prompt="a face", width=8192, height=8192, batch_size=4096, cfg=3.0, steps=2)
    with pytest.raises(memory.MemoryLimitExceeded) as info:
        generate(pipe, req)
    msg = str(info.value)
    limit, _ = memory.memory_limit("cpu")
    assert memory.format_size(info.value.estimate) in msg and memory.format_size(limit) in msg
    assert "--max-memory" in msg and memory.ENV_MAX_MEMORY in msg and "8192x8192" in msg
    assert info.value.estimate > 100 * 1024 ** 4  # hundreds of TiB even for the tiny model


def test_env_limit_refuses_and_zero_turns_the_guard_off(pipe, monkeypatch):
    req = GenerateRequest(prompt="a face", steps=1, cfg=1.0)
    monkeypatch.setenv(memory.ENV_MAX_MEMORY, "1M")
    with pytest.raises(memory.MemoryLimitExceeded, match=f"set by {memory.ENV_MAX_MEMORY}=1M"):
        generate(pipe, req)
    monkeypatch.setenv(memory.ENV_MAX_MEMORY, "0")
    assert generate(pipe, req).shape == (1, pipe.native_size, pipe.native_size, 3)
    monkeypatch.setenv(memory.ENV_MAX_MEMORY, "lots")
    with pytest.raises(ValueError, match=memory.ENV_MAX_MEMORY):
        generate(pipe, req)


def test_estimate_grows_with_pixels_batch_and_guidance(pipe):
    base = memory.estimate_generate_bytes(pipe, 64, 64, 1, 1.0)
    assert memory.estimate_generate_bytes(pipe, 128, 128, 1, 1.0) > base
    assert memory.estimate_generate_bytes(pipe, 64, 64, 2, 1.0) > base
    assert memory.estimate_generate_bytes(pipe, 64, 64, 1, 7.0) > base
    weights = sum(p.numel() * 4 for p in pipe.pipe.unet.parameters())
    assert base > weights


def test_default_limit_comes_from_the_machine(monkeypatch):
    import builtins

    limit, source = memory.memory_limit("cpu")
    assert limit > 0 and "RAM" in source
    real_import = builtins.__import__

    def no_psutil(name, *a, **k):  # psutil missing: sysconf still knows
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    limit2, _ = memory.memory_limit("cpu")
    assert abs(limit2 - limit) <= 0.01 * limit
    monkeypatch.setattr(memory.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert memory.memory_limit("cpu")[0] == int(memory.FALLBACK_BYTES * memory.CPU_SHARE)


def test_generate_node_names_its_inputs(pipe):
    from facesmith.nodes.generate import FaceSmithGenerate

    with pytest.raises(ValueError) as info:
        FaceSmithGenerate().run(pipe, "a face", "", 0, 2, 3.0, 8192, 8192, 4096, "default")
    msg = str(info.value)
    assert "Generate (FaceSmith)" in msg and "batch_size" in msg and memory.ENV_MAX_MEMORY in msg


def test_run_command_max_memory_sets_the_limit(tmp_path, monkeypatch, capsys):
    from facesmith.core.runner import command

    monkeypatch.setenv(memory.ENV_MAX_MEMORY, "")  # restored (removed) after the test: the command sets it
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({}))
    args = argparse.Namespace(workflow=str(wf), out=str(tmp_path / "out"), input_dir=None, temp_dir=None,
                              models_dir=None, overrides=[], check=True, no_progress=True, verbose=False,
                              max_memory="2G")
    command.main(args)
    assert memory.memory_limit("cpu") == (2 * 1024 ** 3, f"set by {memory.ENV_MAX_MEMORY}=2G")
    args.max_memory = "huge"
    assert command.main(args) == 2 and "--max-memory" in capsys.readouterr().err
