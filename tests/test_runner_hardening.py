"""Bad input stops a workflow before any node runs, with a message naming the node and input (cfg NaN, sizes not a
multiple of 8, NUL or over-long file names), also through the nodes' VALIDATE_INPUTS as ComfyUI calls it; deeply
nested JSON and a bad --out are clear errors with exit code 2 (issue 19, "Clear errors")."""
from __future__ import annotations

import importlib
import json

import pytest
import torch

import tiny_models  # noqa: F401  (makes the pack importable as ``facesmith``)

RAN: list[str] = []


class FakePipeline:
    """Stands in for 'Load Base Model': records that it ran (validation must stop the graph before it)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("FACESMITH_PIPELINE",)
    FUNCTION = "load"
    CATEGORY = "test"

    def load(self):
        RAN.append("pipeline")
        return (object(),)


class FakeFloat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, strength):
        RAN.append("float")
        return (torch.full((1, 8, 8, 3), strength),)


@pytest.fixture
def rn():
    return importlib.import_module("facesmith.core.runner")


@pytest.fixture
def classes(rn):
    from facesmith.nodes.generate import FaceSmithGenerate

    RAN.clear()
    return {"FakePipeline": FakePipeline, "FakeFloat": FakeFloat, "FaceSmithGenerate": FaceSmithGenerate,
            **rn.CORE_NODE_CLASS_MAPPINGS}


def _generate_workflow(**inputs):
    gen = {"pipeline": ["1", 0], "prompt": "a face", "negative_prompt": "", "seed": 0, "steps": 2, "cfg": 3.0,
           "width": 64, "height": 64, "batch_size": 1, "scheduler": "default"}
    gen.update(inputs)
    return {"1": {"class_type": "FakePipeline", "inputs": {}},
            "2": {"class_type": "FaceSmithGenerate", "inputs": gen},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}


@pytest.mark.parametrize("name,value,words", [
    ("cfg", float("nan"), "cfg"), ("cfg", float("inf"), "cfg"), ("cfg", "nan", "cfg"),
    ("width", 100, "multiple of 8"), ("height", 36, "multiple of 8"), ("width", 10 ** 6, "width"),
])
def test_generate_inputs_are_refused_before_any_node_runs(rn, classes, tmp_path, name, value, words):
    with pytest.raises(rn.WorkflowError) as info:
        rn.run_workflow(_generate_workflow(**{name: value}), classes, tmp_path / "out", input_dir=tmp_path,
                        progress=False)
    msg = str(info.value)
    assert words in msg and "2" in msg and "Generate" in msg
    assert RAN == []


def test_float_nan_is_refused_for_any_node(rn, classes, tmp_path):
    wf = {"1": {"class_type": "FakeFloat", "inputs": {"strength": float("nan")}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(rn.WorkflowError, match="strength.*finite|finite.*strength"):
        rn.run_workflow(wf, classes, tmp_path / "out", input_dir=tmp_path, progress=False)
    assert RAN == []


@pytest.mark.parametrize("prefix,words", [("a\x00b", "NUL"), ("x" * 300, "bytes"), ("sub/" + "y" * 240, "bytes")])
def test_bad_filename_prefix_is_refused_before_any_node_runs(rn, classes, tmp_path, prefix, words):
    wf = {"1": {"class_type": "FakeFloat", "inputs": {"strength": 0.5}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}
    with pytest.raises(rn.WorkflowError, match=words):
        rn.run_workflow(wf, classes, tmp_path / "out", input_dir=tmp_path, progress=False)
    assert RAN == []


def test_validate_inputs_as_comfyui_calls_them():
    from facesmith.nodes.concept_nodes import FaceSmithSaveConcept, FaceSmithTrainDomainEncoder
    from facesmith.nodes.generate import FaceSmithGenerate

    assert FaceSmithGenerate.VALIDATE_INPUTS(cfg=7.0, width=512, height=0, batch_size=2) is True
    assert FaceSmithGenerate.VALIDATE_INPUTS() is True  # linked inputs are not passed
    msg = FaceSmithGenerate.VALIDATE_INPUTS(cfg=float("nan"))
    assert isinstance(msg, str) and "Generate (FaceSmith)" in msg and "'cfg'" in msg
    assert "multiple of 8" in FaceSmithGenerate.VALIDATE_INPUTS(width=100)
    assert "'batch_size'" in FaceSmithGenerate.VALIDATE_INPUTS(batch_size=0)
    for cls in (FaceSmithSaveConcept, FaceSmithTrainDomainEncoder):
        assert cls.VALIDATE_INPUTS(name="my-face") is True
        for bad in ("a\x00b", "z" * 300, "../escape", ""):
            msg = cls.VALIDATE_INPUTS(name=bad)
            assert isinstance(msg, str) and cls.DISPLAY_NAME in msg and "'name'" in msg, bad


# ------------------------------------------------------------------------------------------ command line: run
def _cli():
    return importlib.import_module("facesmith.core.cli")


def test_deeply_nested_json_exits_2_not_recursion_error(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"1": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert _cli().main(["run", str(deep), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "nested" in capsys.readouterr().err
    medium = tmp_path / "medium.json"  # parses, but deeper than any workflow: refused before deep copies recurse
    medium.write_text(json.dumps({"1": {"class_type": "SaveImage", "inputs": {"x": json.loads("[" * 900 + "]" * 900)}}}))
    assert _cli().main(["run", str(medium), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "nested" in capsys.readouterr().err


def test_nested_dict_workflow_is_a_workflow_error(rn, classes, tmp_path):
    wf = _generate_workflow(prompt=json.loads("[" * 900 + "]" * 900))
    with pytest.raises(rn.WorkflowError, match="nested"):
        rn.run_workflow(wf, classes, tmp_path / "out", input_dir=tmp_path, progress=False)


def test_bad_out_folder_is_a_clear_error(tmp_path, capsys):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"1": {"class_type": "SaveImage", "inputs": {}}}))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, words in ((a_file, "is a file"), (a_file / "sub", "cannot create")):
        assert _cli().main(["run", str(wf), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert words in err and str(out) in err and "--out" in err and "Traceback" not in err
