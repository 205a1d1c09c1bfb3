"""The headless workflow runner (core/runner): API and UI format end to end with small fake nodes plus the
LoadImage/SaveImage/PreviewImage stand-ins, every validation error, --set, mid-run failure, convert."""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------------ fake nodes
class FakeSource:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "width": ("INT", {"default": 8, "min": 1, "max": 64, "step": 1}),
                "height": ("INT", {"default": 8, "min": 1, "max": 64}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**32}),
                "color": (["red", "green", "blue"], {"default": "red"}),
            },
            "optional": {"strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05})},
        }

    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("image", "seed")
    FUNCTION = "make"
    CATEGORY = "test"

    def make(self, width, height, seed, color, strength=1.0):
        img = torch.zeros(1, height, width, 3)
        img[..., ["red", "green", "blue"].index(color)] = strength
        img[0, 0, 0, :] = (seed % 256) / 255.0
        return (img, seed)


class FakeInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, images):
        return (1.0 - images,)


class FakeBlend:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("IMAGE",), "b": ("IMAGE",),
                             "mix": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blend"
    CATEGORY = "test"

    def blend(self, a, b, mix):
        return (a * (1 - mix) + mix * b.mean(),)


class FakeBoom:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, images):
        raise RuntimeError("boom: the model exploded")


class FakeVariant:  # control_after_generate on a non-seed INT, then a STRING widget
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"variant": ("INT", {"default": 0, "control_after_generate": True}),
                             "label": ("STRING", {"multiline": True, "default": ""}),
                             "seed": ("INT", {"default": 0, "control_after_generate": False}),
                             "images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, images, variant, label, seed):
        return (images,)


class FakeAny:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"anything": ("*",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, anything):
        return {"ui": {"text": [str(anything)]}}


class FakeSplit:  # OUTPUT_IS_LIST: one image in, two out as a list
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"

    def run(self, images):
        return ([images, 1.0 - images],)


class FakeStop:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, images):
        raise KeyboardInterrupt


class FakeBareReturn:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, images):
        return images  # not a tuple: breaks ComfyUI's contract


class FakeProgressUser:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    seen = []
    env = []

    def run(self, images):
        from facesmith.core.progress import headless_progress_factory

        p = headless_progress_factory()("FakeProgressUser")  # what nodes/comfy_bridge.node_progress asks for
        for i in range(3):
            p.update(i + 1, 3)
        FakeProgressUser.seen.append(p)
        FakeProgressUser.env.append(os.environ.get("FACESMITH_OUTPUT"))
        return (images,)


FAKES = {c.__name__: c for c in (FakeSource, FakeInvert, FakeBlend, FakeBoom, FakeVariant, FakeAny, FakeSplit,
                                 FakeBareReturn, FakeProgressUser, FakeStop)}


# ---------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def rn(facesmith):
    return importlib.import_module("facesmith.core.runner")


@pytest.fixture
def classes(rn):
    return {**FAKES, **rn.CORE_NODE_CLASS_MAPPINGS}


@pytest.fixture
def dirs(tmp_path):
    inp = tmp_path / "input"
    inp.mkdir()
    arr = np.zeros((6, 10, 3), np.uint8)
    arr[:, :5] = (255, 0, 0)
    Image.fromarray(arr).save(inp / "face.png")
    return tmp_path / "output", inp


def _api_basic(prefix="fs/test"):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "2": {"class_type": "FakeInvert", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def _png_text(path):
    with Image.open(path) as im:
        return dict(im.text)


# ------------------------------------------------------------------------------------------------------- end to end
def test_api_workflow_runs_and_saves_like_comfyui(rn, classes, dirs):
    out, inp = dirs
    lines = []
    wf = _api_basic()
    res = rn.run_workflow(wf, classes, out, input_dir=inp, progress=lines.append)
    assert res.order == ["1", "2", "3", "4"]
    image, mask = res.outputs["1"]
    assert image.shape == (1, 6, 10, 3) and image.dtype == torch.float32
    assert float(image.max()) == 1.0 and float(image.min()) == 0.0
    assert mask.shape == (1, 64, 64)
    assert torch.allclose(res.output("2"), 1.0 - image)
    saved = out / "fs" / "test_00001_.png"
    assert saved.is_file()
    assert res.ui["3"] == {"images": [{"filename": "test_00001_.png", "subfolder": "fs", "type": "output"}]}
    assert saved in res.files
    meta = _png_text(saved)
    assert json.loads(meta["prompt"]) == res.prompt and "workflow" not in meta  # API input: no editor graph
    with Image.open(saved) as im:
        assert np.array(im)[0, 0].tolist() == [0, 255, 255]  # inverted red
    preview = [f for f in res.files if "temp" in f.parts]
    assert len(preview) == 1 and preview[0].is_file() and "_temp_" in preview[0].name
    assert preview[0].parent == out.parent / "temp"
    assert len(lines) == 4 and lines[1].startswith("[2/4] node 2 FakeInvert ... done in ")

    # the counter continues after the highest existing file, and nothing is overwritten
    (out / "fs" / "test_00007_.png").write_bytes(b"user file")
    res2 = rn.run_workflow(wf, classes, out, input_dir=inp, progress=False)
    assert res2.ui["3"]["images"][0]["filename"] == "test_00008_.png"
    assert (out / "fs" / "test_00007_.png").read_bytes() == b"user file"
    assert (out / "fs" / "test_00001_.png").is_file()


def test_workflow_from_file_and_api_wrapper(rn, classes, dirs, tmp_path):
    out, inp = dirs
    path = tmp_path / "wf.json"
    graph = {"nodes": [], "links": [], "note": "editor graph"}
    path.write_text(json.dumps({"prompt": _api_basic("wrapped"), "extra_data": {"extra_pnginfo": {"workflow": graph}}}))
    res = rn.run_workflow(path, classes, out, input_dir=inp, progress=False)
    meta = _png_text(out / "wrapped_00001_.png")
    assert json.loads(meta["workflow"]) == graph


def _ui_workflow():
    """LoadImage -> Reroute -> FakeBlend(a); FakeSource(width from a PrimitiveNode) -> FakeBlend(b); FakeBlend ->
    bypassed FakeInvert -> SaveImage; plus a Note and a muted node."""
    return {
        "last_node_id": 9, "last_link_id": 8, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "LoadImage", "mode": 0, "widgets_values": ["face.png", "image"],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2, 7]}, {"name": "MASK", "type": "MASK"}]},
            {"id": 2, "type": "FakeSource", "mode": 0,
             "inputs": [{"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 5},
                        {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None}],
             "outputs": [{"name": "image", "type": "IMAGE", "links": [4]}, {"name": "seed", "type": "INT"}],
             "widgets_values": [16, 8, 123, "randomize", "green", 0.5]},
            {"id": 3, "type": "FakeBlend", "mode": 0, "title": "Blend it",
             "inputs": [{"name": "a", "type": "IMAGE", "link": 3}, {"name": "b", "type": "IMAGE", "link": 4}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [6]}], "widgets_values": [0.25]},
            {"id": 4, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 8}],
             "widgets_values": ["ui_run"]},
            {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["a note"]},
            {"id": 6, "type": "PrimitiveNode", "mode": 0,
             "outputs": [{"name": "INT", "type": "INT", "links": [5], "widget": {"name": "width"}}],
             "widgets_values": [24, "fixed"]},
            {"id": 7, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 2}],
             "outputs": [{"name": "", "type": "IMAGE", "links": [3]}]},
            {"id": 8, "type": "FakeBoom", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": 7}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}]},
            {"id": 9, "type": "FakeInvert", "mode": 4, "inputs": [{"name": "images", "type": "IMAGE", "link": 6}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [8]}]},
        ],
        "links": [[2, 1, 0, 7, 0, "IMAGE"], [3, 7, 0, 3, 0, "IMAGE"], [4, 2, 0, 3, 1, "IMAGE"],
                  [5, 6, 0, 2, 0, "INT"], [6, 3, 0, 9, 0, "IMAGE"], [7, 1, 0, 8, 0, "IMAGE"],
                  [8, 9, 0, 4, 0, "IMAGE"]],
    }


EXPECTED_UI_API = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
    "2": {"class_type": "FakeSource",
          "inputs": {"width": 24, "height": 8, "seed": 123, "color": "green", "strength": 0.5}},
    "3": {"class_type": "FakeBlend", "inputs": {"a": ["1", 0], "b": ["2", 0], "mix": 0.25}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "ui_run"}},
}


def _strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_ui_to_api_conversion(rn, classes, dirs):
    ui = _ui_workflow()
    api = rn.to_api(ui, classes)
    assert _strip_meta(api) == EXPECTED_UI_API
    assert api["3"]["_meta"]["title"] == "Blend it"
    # the newer editor's object links convert the same way
    ui2 = copy.deepcopy(ui)
    ui2["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), l))
                    for l in ui["links"]]
    assert _strip_meta(rn.to_api(ui2, classes)) == EXPECTED_UI_API
    rn.validate(api, classes, input_dir=dirs[1])  # LoadImage checks its file in the input folder


def test_ui_workflow_runs_with_workflow_metadata(rn, classes, dirs):
    out, inp = dirs
    ui = _ui_workflow()
    res = rn.run_workflow(ui, classes, out, input_dir=inp, progress=False)
    assert res.order == ["1", "2", "3", "4"]
    assert res.output("2").shape == (1, 8, 24, 3)
    meta = _png_text(out / "ui_run_00001_.png")
    assert json.loads(meta["workflow"]) == ui
    assert _strip_meta(json.loads(meta["prompt"])) == EXPECTED_UI_API
    # a PNG ComfyUI (or the runner) saved is a workflow too: its embedded editor graph runs again
    res2 = rn.run_workflow(out / "ui_run_00001_.png", classes, out, input_dir=inp, progress=False)
    assert _strip_meta(res2.prompt) == EXPECTED_UI_API and (out / "ui_run_00002_.png").is_file()


def test_control_after_generate_mapping(rn, classes):
    from facesmith.core.runner.graph import map_widget_values
    from facesmith.core.runner.spec import input_specs

    specs = input_specs(FakeSource)
    with_control, _ = map_widget_values(specs, [16, 8, 7, "increment", "blue", 0.3])
    without_control, _ = map_widget_values(specs, [16, 8, 7, "blue", 0.3])  # older editors
    assert with_control == without_control == {"width": 16, "height": 8, "seed": 7, "color": "blue", "strength": 0.3}
    # control_after_generate: True on a non-seed INT; explicit False on "seed" means no control value after it
    vspecs = input_specs(FakeVariant)
    got, problems = map_widget_values(vspecs, [3, "fixed", "randomize", 11])
    assert got == {"variant": 3, "label": "randomize", "seed": 11} and not problems
    assert map_widget_values(vspecs, {"variant": 2, "label": "x", "seed": 1})[0] == {"variant": 2, "label": "x",
                                                                                     "seed": 1}


def test_ui_rejects_unknown_and_unsupported_nodes(rn, classes):
    ui = _ui_workflow()
    ui["nodes"].append({"id": 20, "type": "IPAdapterAdvanced", "mode": 0, "widgets_values": [1.0]})
    ui["nodes"].append({"id": 21, "type": "0a1b2c3d-subgraph", "mode": 0})
    ui["definitions"] = {"subgraphs": [{"id": "0a1b2c3d-subgraph"}]}
    ui["links"].append([30, 99, 0, 3, 1, "IMAGE"])  # from a node that is not in the file
    ui["nodes"][2]["inputs"][1]["link"] = 30
    with pytest.raises(rn.WorkflowError) as ei:
        rn.to_api(ui, classes)
    text = str(ei.value)
    assert "node 20 (IPAdapterAdvanced)" in text and "ComfyUI_IPAdapter_plus" in text
    assert "node 21" in text and "subgraph" in text
    assert "node 3 (FakeBlend), input 'b'" in text and "node 99" in text
    assert {e.node_id for e in ei.value.errors} == {"3", "20", "21"}


# ---------------------------------------------------------------------------------------------------------- errors
def test_all_errors_reported_at_once_before_anything_runs(rn, classes, dirs):
    out, inp = dirs
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "2": {"class_type": "FakeSource", "inputs": {"width": 500, "height": 8, "seed": 1, "color": "purple"}},
        "3": {"class_type": "FakeInvert", "inputs": {"images": ["2", 1]}},
        "4": {"class_type": "FakeInvert", "inputs": {}},
        "5": {"class_type": "FakeInvert", "inputs": {"images": ["42", 0]}},
        "6": {"class_type": "FakeInvert", "inputs": {"images": ["1", 5]}},
        "7": {"class_type": "FakeInvert", "inputs": {"images": ["8", 0]}},
        "8": {"class_type": "FakeInvert", "inputs": {"images": ["7", 0]}},
        "9": {"class_type": "KSampler", "inputs": {}},
        "10": {"class_type": "IPAdapterAdvanced", "inputs": {}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
        "12": {"class_type": "FakeAny", "inputs": {"anything": ["2", 1]}},  # "*" takes anything
        "13": {"class_type": "FakeBlend", "inputs": {"a": ["1", 0], "b": ["1", 0], "mix": "lots"}},
        "14": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
    }
    with pytest.raises(rn.WorkflowError) as ei:
        rn.run_workflow(wf, classes, out, input_dir=inp, progress=False)
    errs = {(e.node_id, e.input): e for e in ei.value.errors}
    text = str(ei.value)
    expect = {
        ("2", "width"): ("out_of_range", "500"),
        ("2", "color"): ("not_in_list", "'red', 'green', 'blue'"),
        ("3", "images"): ("type_mismatch", "INT"),
        ("4", "images"): ("missing_input", "missing"),
        ("5", "images"): ("bad_link", "42"),
        ("6", "images"): ("bad_link", "output 5"),
        ("9", None): ("unknown_node", "ComfyUI core node"),
        ("10", None): ("unknown_node", "ComfyUI_IPAdapter_plus"),
        ("13", "mix"): ("bad_value", "lots"),
        ("14", "image"): ("custom_validation", "face.png"),  # lists what is available
    }
    for (nid, name), (kind, fragment) in expect.items():
        e = errs[(nid, name)]
        assert e.kind == kind and fragment in e.message, e
        assert f"node {nid} ({wf[nid]['class_type']})" in text
        if name:
            assert f"input '{name}'" in str(e)
    cycles = [e for e in ei.value.errors if e.kind == "cycle"]
    assert len(cycles) == 1 and "7 (FakeInvert)" in cycles[0].message and "8 (FakeInvert)" in cycles[0].message
    assert "run this workflow in ComfyUI" in errs[("9", None)].message
    assert "12" not in {e.node_id for e in ei.value.errors}
    assert not out.exists()  # nothing ran


def test_invalid_json_names_file_line_and_column(rn, classes, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{\n  "1": {"class_type": "LoadImage",\n  "inputs": {"image": }\n}\n')
    with pytest.raises(rn.WorkflowError) as ei:
        rn.run_workflow(bad, classes, tmp_path / "out", progress=False)
    assert "broken.json" in str(ei.value) and "line 3" in str(ei.value) and "column" in str(ei.value)


def test_no_output_node_and_prefix_traversal(rn, classes, dirs):
    out, inp = dirs
    with pytest.raises(rn.WorkflowError, match="no output node"):
        rn.validate({"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}}}, classes)
    for prefix in ("../evil", "/etc/evil", "a/../../evil"):
        with pytest.raises(rn.WorkflowError) as ei:
            rn.run_workflow(_api_basic(prefix), classes, out, input_dir=inp, progress=False)
        assert "node 3 (SaveImage), input 'filename_prefix'" in str(ei.value)
    assert not (out.parent / "evil_00001_.png").exists()


# ------------------------------------------------------------------------------------------------ command, overrides
def _args(**kw):
    base = dict(workflow=None, out=None, input_dir=None, temp_dir=None, models_dir=None, overrides=[], check=False,
                no_progress=True, verbose=False)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture
def command(rn, classes, monkeypatch):
    cmd = importlib.import_module("facesmith.core.runner.command")
    monkeypatch.setattr(cmd, "load_node_classes", lambda: (dict(classes), None))
    return cmd


def test_set_overrides(rn, classes, dirs, tmp_path, command, monkeypatch, capsys):
    out, inp = dirs
    wf = {"1": {"class_type": "FakeSource", "inputs": {"width": 4, "height": 4, "seed": 1, "color": "red"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ov"}}}
    res = rn.run_workflow(wf, classes, out, input_dir=inp, progress=False,
                          overrides=["1.width=12", "1.color=blue", "1.strength=0.5", "2.filename_prefix=sub/ov"])
    assert res.prompt["1"]["inputs"] == {"width": 12, "height": 4, "seed": 1, "color": "blue", "strength": 0.5}
    assert res.output("1").shape == (1, 4, 12, 3) and float(res.output("1")[0, 1, 1, 2]) == 0.5
    assert (out / "sub" / "ov_00001_.png").is_file()

    path = tmp_path / "ov.json"
    path.write_text(json.dumps(wf))
    monkeypatch.setenv("FACESMITH_MODELS", "unset")
    code = command.main(_args(workflow=str(path), out=str(out), input_dir=str(inp), models_dir=str(tmp_path / "m"),
                              overrides=["1.seed=77", "99.seed=1", "1.nope=2", "1.width=999", "2.images=3", "oops"]))
    err = capsys.readouterr().err
    assert code == 2
    assert os.environ["FACESMITH_MODELS"] == str((tmp_path / "m").resolve())
    assert "node 99, input 'seed'" in err and "no node 99" in err
    assert "node 1 (FakeSource), input 'nope'" in err and "width, height, seed, color, strength" in err
    assert "node 1 (FakeSource), input 'width'" in err and "999" in err
    assert "node 2 (SaveImage), input 'images'" in err and "cannot be set" in err
    assert "'oops'" in err
    assert not (out / "ov_00001_.png").exists()


def test_set_on_primitive_node_points_to_its_targets(rn, classes, dirs):
    out, inp = dirs
    with pytest.raises(rn.WorkflowError) as ei:
        rn.run_workflow(_ui_workflow(), classes, out, input_dir=inp, progress=False, overrides={"6.value": 3})
    assert "node 6" in str(ei.value) and "2.width" in str(ei.value)


def test_mid_run_failure_keeps_files_and_exits_nonzero(rn, classes, dirs, tmp_path, command, capsys):
    out, inp = dirs
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "before"}},
          "3": {"class_type": "FakeBoom", "inputs": {"images": ["1", 0]}},
          "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "after"}}}
    with pytest.raises(rn.ExecutionError) as ei:
        rn.run_workflow(wf, classes, out, input_dir=inp, progress=False)
    assert ei.value.node_id == "3" and "boom" in str(ei.value) and "FakeBoom" in str(ei.value)
    assert ei.value.result.order == ["1", "2"] and ei.value.result.files == [out / "before_00001_.png"]

    path = tmp_path / "boom.json"
    path.write_text(json.dumps(wf))
    code = command.main(_args(workflow=str(path), out=str(out), input_dir=str(inp)))
    err = capsys.readouterr().err
    assert code == 1
    assert "node 3 (FakeBoom) failed: RuntimeError: boom" in err and "before_00002_.png" in err
    assert (out / "before_00002_.png").is_file() and not list(out.glob("after*"))
    wf["3"]["class_type"] = "FakeStop"  # Ctrl-C inside a node
    path.write_text(json.dumps(wf))
    assert command.main(_args(workflow=str(path), out=str(out), input_dir=str(inp))) == 130
    assert "node 3 (FakeStop) was interrupted" in capsys.readouterr().err


def test_contract_violations_and_list_outputs(rn, classes, dirs):
    out, inp = dirs
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
          "2": {"class_type": "FakeSplit", "inputs": {"images": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "split"}},
          "4": {"class_type": "FakeInvert", "inputs": {"images": ["1", 0]}}}  # feeds no output: skipped
    res = rn.run_workflow(wf, classes, out, input_dir=inp, progress=False)
    assert len(res.output("2")) == 2 and res.skipped == ["4"] and "4" not in res.outputs
    assert sorted(p.name for p in out.glob("split_*")) == ["split_00001_.png", "split_00002_.png"]
    wf["4"] = {"class_type": "FakeBareReturn", "inputs": {"images": ["1", 0]}}
    wf["3"]["inputs"]["images"] = ["4", 0]
    with pytest.raises(rn.ExecutionError, match="requires a tuple"):
        rn.run_workflow(wf, classes, out, input_dir=inp, progress=False)


def test_nodes_get_headless_progress_bars(rn, classes, dirs, monkeypatch):
    out, inp = dirs
    from facesmith.core.progress import headless_progress_factory

    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
          "2": {"class_type": "FakeProgressUser", "inputs": {"images": ["1", 0]}},
          "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    FakeProgressUser.seen.clear()
    monkeypatch.delenv("FACESMITH_OUTPUT", raising=False)
    rn.run_workflow(wf, classes, out, input_dir=inp, progress=True)
    assert len(FakeProgressUser.seen) == 1
    p = FakeProgressUser.seen[0]
    assert p.label == "[2/3] FakeProgressUser" and p.on_update is not None  # a tqdm bar, numbered like the line
    assert headless_progress_factory() is None  # restored after the run
    assert FakeProgressUser.env[-1] == str(out.resolve())  # FaceSmith nodes saving files write under --out


def test_check_only_and_cli_routing(rn, classes, dirs, tmp_path, command, monkeypatch, capsys):
    out, inp = dirs
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_api_basic("cli")))
    cli = importlib.import_module("facesmith.core.cli")
    monkeypatch.setattr(sys, "argv", ["facesmith"])
    assert cli.main(["run", str(path), "--out", str(out), "--input-dir", str(inp), "--check"]) == 0
    assert not out.exists()
    assert cli.main(["run", str(path), "--out", str(out), "--input-dir", str(inp), "--no-progress"]) == 0
    assert (out / "cli_00001_.png").is_file() and "cli_00001_.png" in capsys.readouterr().out


def test_convert_refuses_overwrite(rn, classes, tmp_path, command, capsys):
    conv = importlib.import_module("facesmith.core.runner.command_convert")
    src, dst = tmp_path / "ui.json", tmp_path / "api.json"
    src.write_text(json.dumps(_ui_workflow()))
    args = argparse.Namespace(ui=str(src), api=str(dst), force=False)
    assert conv.main(args) == 0
    assert _strip_meta(json.loads(dst.read_text())) == EXPECTED_UI_API
    dst.write_text("precious")
    assert conv.main(args) == 1
    assert dst.read_text() == "precious" and "--force" in capsys.readouterr().err
    assert conv.main(argparse.Namespace(ui=str(src), api=str(dst), force=True)) == 0
    assert _strip_meta(json.loads(dst.read_text())) == EXPECTED_UI_API
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cache_reuses_unchanged_linkless_nodes_across_runs(rn, classes, dirs):
    """With a cache kept by the caller (the demo keeps one per process), a node with no links whose widget values
    and IS_CHANGED are the same is not run again (ComfyUI's cache between prompts); output nodes and nodes fed by
    links always run; IS_CHANGED NaN or another value runs it again."""
    out, inp = dirs
    calls = []

    class Counted(FakeSource):
        CHANGED = "a"

        @classmethod
        def IS_CHANGED(cls, width, **kwargs):
            return cls.CHANGED

        def make(self, *a, **k):
            calls.append(1)
            return super().make(*a, **k)

    cl = dict(classes, FakeSource=Counted)
    wf = {"1": {"class_type": "FakeSource", "inputs": {"width": 4, "height": 4, "seed": 3, "color": "green"}},
          "2": {"class_type": "FakeInvert", "inputs": {"images": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fs/cache"}}}
    cache: dict = {}
    first = rn.run_workflow(wf, cl, out, input_dir=inp, progress=False, cache=cache)
    second = rn.run_workflow(wf, cl, out, input_dir=inp, progress=False, cache=cache)
    assert len(calls) == 1 and second.outputs["1"][0] is first.outputs["1"][0]
    assert len(list((out / "fs").glob("cache_*.png"))) == 2  # the output node ran both times
    Counted.CHANGED = "b"
    rn.run_workflow(wf, cl, out, input_dir=inp, progress=False, cache=cache)
    Counted.CHANGED = float("nan")
    rn.run_workflow(wf, cl, out, input_dir=inp, progress=False, cache=cache)
    rn.run_workflow(wf, cl, out, input_dir=inp, progress=False, cache=cache)
    wf["1"]["inputs"]["seed"] = 4
    rn.run_workflow(wf, cl, out, input_dir=inp, progress=False)  # no cache: always runs
    assert len(calls) == 5
