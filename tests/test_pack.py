"""The pack imports as ComfyUI imports it (by path, named after its folder, beside ComfyUI's own top-level
``nodes`` module) and as ``facesmith``; every node class honours ComfyUI's node contract."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_like_comfyui(tmp_path: Path, folder_name: str = "comfyui-facesmith"):
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / folder_name).symlink_to(ROOT, target_is_directory=True)
    module_path = custom_nodes / folder_name
    # ComfyUI's own top-level modules are importable while custom nodes load; ours must not collide with them.
    saved = {k: sys.modules.get(k) for k in ("nodes", "core", "trainers")}
    sys.modules["nodes"] = types.ModuleType("nodes")  # ComfyUI's nodes.py
    sys.modules["nodes"].NODE_CLASS_MAPPINGS = {"KSampler": object}
    try:
        spec = importlib.util.spec_from_file_location(folder_name, module_path / "__init__.py",
                                                      submodule_search_locations=[str(module_path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[folder_name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for k in [k for k in sys.modules if k == folder_name or k.startswith(folder_name + ".")]:
            del sys.modules[k]


def test_imports_like_comfyui_by_path(tmp_path):
    mod = _load_like_comfyui(tmp_path)
    assert mod.NODE_CLASS_MAPPINGS, "no nodes exported"
    assert set(mod.NODE_DISPLAY_NAME_MAPPINGS) <= set(mod.NODE_CLASS_MAPPINGS)
    assert "FaceSmithGenerate" in mod.NODE_CLASS_MAPPINGS


def test_imports_as_facesmith_and_every_node_module_loads():
    import facesmith
    from facesmith import nodes

    assert nodes.LOAD_ERRORS == {}, nodes.LOAD_ERRORS
    assert facesmith.NODE_CLASS_MAPPINGS is nodes.NODE_CLASS_MAPPINGS
    for name in nodes._MODULES:
        assert f"facesmith.nodes.{name}" in sys.modules


def _node_items():
    from facesmith import NODE_CLASS_MAPPINGS

    return sorted(NODE_CLASS_MAPPINGS.items())


@pytest.mark.parametrize("name,cls", _node_items())
def test_node_contract(name, cls):
    from facesmith import NODE_DISPLAY_NAME_MAPPINGS

    assert name.startswith("FaceSmith"), name
    assert name in NODE_DISPLAY_NAME_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS[name]
    spec = cls.INPUT_TYPES()
    assert isinstance(spec, dict) and set(spec) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for inp, s in spec.get(section, {}).items():
            assert isinstance(s, tuple) and 1 <= len(s) <= 2, (name, inp)
            opts = s[1] if len(s) == 2 else {}
            assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
            if s[0] in ("INT", "FLOAT"):
                assert "default" in opts and "min" in opts and "max" in opts, (name, inp)
            if isinstance(s[0], list):
                assert s[0], f"{name}.{inp}: empty combo"
    assert isinstance(cls.RETURN_TYPES, tuple)
    if hasattr(cls, "RETURN_NAMES"):
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY.startswith("FaceSmith")
    assert isinstance(getattr(cls, "DESCRIPTION", None), str) and len(cls.DESCRIPTION) > 20
    assert NODE_DISPLAY_NAME_MAPPINGS[name].endswith(" (FaceSmith)"), NODE_DISPLAY_NAME_MAPPINGS[name]
    tips = getattr(cls, "OUTPUT_TOOLTIPS", ())
    assert len(tips) == len(cls.RETURN_TYPES) and all(isinstance(t, str) and t for t in tips), f"{name}: outputs"
    for section in ("required", "optional"):
        for inp, s in spec.get(section, {}).items():
            if inp == "seed" or inp.endswith("_seed"):  # one range across the pack, ComfyUI's (KSampler's)
                assert s[0] == "INT" and s[1]["min"] == 0 and s[1]["max"] == 2**64 - 1, (name, inp, s[1])


# nodes that read a model file chosen by name: ComfyUI must know when that file changed (IS_CHANGED)
READS_FILES_BY_NAME = {"FaceSmithLoadBaseModel", "FaceSmithLoadDomainEncoder", "FaceSmithLoadConcept",
                       "FaceSmithLoadInstructModel", "FaceSmithLoadIdentityAdapter", "FaceSmithLoadIdentity",
                       "FaceSmithCheckpointLoader", "FaceSmithLoadFaceModel", "FaceSmithFaceAnalysis"}


def test_nodes_that_read_files_by_name_say_when_the_file_changed(tmp_path):
    """IS_CHANGED on every file-reading node; Load Concept's changes when the embedding or its LoRA is rewritten
    under the same name (ComfyUI would otherwise serve the stale cached concept), not when nothing changed."""
    from safetensors.torch import save_file
    import torch

    from facesmith import NODE_CLASS_MAPPINGS
    from facesmith.core import paths

    for name in READS_FILES_BY_NAME:
        cls = NODE_CLASS_MAPPINGS[name]
        assert callable(getattr(cls, "IS_CHANGED", None)), name
        # ComfyUI calls IS_CHANGED(**every widget value); a narrower signature makes it "always changed" (NaN)
        widgets = {}
        for group in cls.INPUT_TYPES().values():
            for key, spec in group.items():
                if isinstance(spec[0], list):
                    widgets[key] = (spec[1].get("default") if len(spec) > 1 else None) or (spec[0] or ["none"])[0]
                elif spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                    widgets[key] = spec[1].get("default") if len(spec) > 1 else None
        assert isinstance(cls.IS_CHANGED(**widgets), str), name
    load = NODE_CLASS_MAPPINGS["FaceSmithLoadConcept"]
    paths.set_models_dir(tmp_path)
    try:
        (tmp_path / "embeddings").mkdir()
        (tmp_path / "loras").mkdir()
        save_file({"emb_params": torch.zeros(1, 4)}, str(tmp_path / "embeddings" / "c.safetensors"),
                  metadata={"lora_file": "c.safetensors"})
        save_file({"x": torch.zeros(2)}, str(tmp_path / "loras" / "c.safetensors"))
        first = load.IS_CHANGED("c.safetensors", "auto", "", 1.0)
        assert load.IS_CHANGED("c.safetensors", "auto", "", 1.0) == first
        save_file({"x": torch.ones(2)}, str(tmp_path / "loras" / "c.safetensors"))  # the LoRA rewritten
        second = load.IS_CHANGED("c.safetensors", "auto", "", 1.0)
        assert second != first
        save_file({"emb_params": torch.ones(1, 4)}, str(tmp_path / "embeddings" / "c.safetensors"),
                  metadata={"lora_file": "c.safetensors"})
        assert load.IS_CHANGED("c.safetensors", "auto", "", 1.0) not in (first, second)
        assert load.IS_CHANGED("c.safetensors", "none", "", 1.0) != load.IS_CHANGED("c.safetensors", "auto", "", 1.0)
        # Load Face Model: the unified model file, or a VLM folder (any file in it) and its LoRA
        face = NODE_CLASS_MAPPINGS["FaceSmithLoadFaceModel"]
        (tmp_path / "facesmith" / "understand").mkdir(parents=True)
        save_file({"x": torch.zeros(2)}, str(tmp_path / "facesmith" / "understand" / "m.safetensors"))
        first = face.IS_CHANGED("unified", "understand/m.safetensors", "", "none")
        save_file({"x": torch.ones(2)}, str(tmp_path / "facesmith" / "understand" / "m.safetensors"))
        assert face.IS_CHANGED("unified", "understand/m.safetensors", "", "none") != first
        vlm = tmp_path / "vlm"
        vlm.mkdir()
        (vlm / "config.json").write_text("{}")
        first = face.IS_CHANGED("vlm", "-", str(vlm), "none")
        (vlm / "config.json").write_text('{"a": 1}')
        assert face.IS_CHANGED("vlm", "-", str(vlm), "none") != first
    finally:
        paths.set_models_dir(None)


def test_queue_time_checks_need_no_model():
    from facesmith import NODE_CLASS_MAPPINGS

    train, embed = NODE_CLASS_MAPPINGS["FaceSmithTrainDomainEncoder"], NODE_CLASS_MAPPINGS["FaceSmithEmbedConcept"]
    assert train.VALIDATE_INPUTS(name="ok", dataset="synthface", dataset_folder="") is True
    assert "input 'dataset_folder' is empty" in train.VALIDATE_INPUTS(name="ok", dataset="folder", dataset_folder=" ")
    assert "input 'dataset'" in train.VALIDATE_INPUTS(name="ok", dataset="nope", dataset_folder="")
    assert "input 'name'" in train.VALIDATE_INPUTS(name="../x", dataset="synthface", dataset_folder="")
    assert embed.VALIDATE_INPUTS(token="<fs-person>") is True and embed.VALIDATE_INPUTS() is True
    assert "Embed Concept (FaceSmith): input 'token'" in embed.VALIDATE_INPUTS(token="")
    apply = NODE_CLASS_MAPPINGS["FaceSmithApplyConcept"]
    assert apply.VALIDATE_INPUTS(start_percent=0.2, end_percent=0.8) is True and apply.VALIDATE_INPUTS() is True
    assert "is after end_percent" in apply.VALIDATE_INPUTS(start_percent=0.9, end_percent=0.1)


def test_registry_icon_file_exists():
    import tomllib

    from PIL import Image

    icon = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["Icon"]
    rel = icon.split("/main/", 1)[1]  # the raw URL of a file on the main branch
    with Image.open(ROOT / rel) as im:
        assert im.width == im.height and 64 <= im.width <= 400, im.size


def _packages_on_disk() -> set[str]:
    found = {"facesmith"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in ("tests", ".venv", "build") or any(p.startswith(".") for p in rel.parts):
            continue
        if rel.parts:
            found.add("facesmith." + ".".join(rel.parts))
    return found


def test_packages_are_found_not_listed():
    """No hand-written package list to forget a new subpackage in: setup.py finds them all."""
    import runpy
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "packages" not in data["tool"]["setuptools"] and data["tool"]["setuptools"]["package-dir"] == {
        "facesmith": "."}
    found = runpy.run_path(str(ROOT / "setup.py"), run_name="not_main")["packages"]()  # guarded: no setup() call
    assert set(found) == _packages_on_disk() and "facesmith.core.training" in found
    assert data["tool"]["comfy"]["PublisherId"] and data["tool"]["comfy"]["DisplayName"]
    assert data["project"]["license"] == "GPL-3.0-or-later"


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_the_command(tmp_path):
    """A non-editable build (what `pip install .` installs): every subpackage, the `facesmith` command, no setup.py
    and no tests inside the package."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # pip builds in the source tree (build/, *.egg-info): build a copy
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                                             ".cache", "assets"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and "No module named pip" in out.stderr:
        pytest.skip("pip is not installed in this environment")
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == _packages_on_disk()
    assert "facesmith/setup.py" not in names and not any(n.startswith("facesmith/tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "facesmith = facesmith.core.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_command_line_help():
    out = subprocess.run([sys.executable, "-m", "facesmith.core.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in ("run", "demo", "bench", "train", "synthface"):
        assert cmd in out.stdout


def test_readme_lists_every_node_and_the_two_commands():
    from facesmith import NODE_CLASS_MAPPINGS

    readme = (ROOT / "README.md").read_text()
    for name in NODE_CLASS_MAPPINGS:
        assert f"`{name}`" in readme, f"README does not list {name}"
    assert "facesmith demo" in readme and "python -m pytest -q tests" in readme
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()
