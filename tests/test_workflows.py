"""The shipped workflows: UI files and API twins are exactly what core/workflow_defs.py defines, they validate
against the node classes, and `facesmith run` executes them end to end on the built-in SynthFace models."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from facesmith.core.assets import assets
from facesmith.core.workflow_defs import API_DIR, WORKFLOWS, WORKFLOWS_DIR, render_all

ROOT = Path(__file__).resolve().parents[1]
built = pytest.mark.skipif(not all(a.present for a in assets()),
                           reason="built-in SynthFace assets missing (facesmith assets --build)")


@pytest.fixture(scope="module")
def node_classes():
    from facesmith.core.runner.command import load_node_classes

    classes, problem = load_node_classes()
    assert problem is None, problem
    return classes


def test_files_match_definitions(node_classes):
    rendered = render_all(node_classes)
    assert sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json")) == sorted(WORKFLOWS)
    assert sorted(p.stem for p in API_DIR.glob("*.json")) == sorted(WORKFLOWS)
    for name, (ui, api) in rendered.items():
        assert json.loads((WORKFLOWS_DIR / f"{name}.json").read_text()) == ui, \
            f"{name}: UI file differs; run python -m facesmith.core.workflow_defs"
        assert json.loads((API_DIR / f"{name}.json").read_text()) == api, f"{name}: API twin differs"


def test_ui_files_are_editor_format(node_classes):
    for path in WORKFLOWS_DIR.glob("*.json"):
        ui = json.loads(path.read_text())
        assert ui["version"] == 0.4 and ui["nodes"] and "links" in ui
        ids = {n["id"] for n in ui["nodes"]}
        for link in ui["links"]:
            assert link[1] in ids and link[3] in ids, (path.name, link)
        for n in ui["nodes"]:
            assert n["type"] in node_classes, (path.name, n["type"])


@built
@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_validates_with_builtin_models(name, node_classes, tmp_path):
    from facesmith.core.runner.execute import prepare

    prompt, _, warnings = prepare(WORKFLOWS_DIR / f"{name}.json", node_classes)
    assert set(prompt) == {str(n.id) for n in WORKFLOWS[name]()}


@pytest.mark.slow
@built
@pytest.mark.parametrize("name", ["synthface_text_to_image", "e4t_personalize"])
def test_facesmith_run_writes_pngs_with_workflow(name, tmp_path):
    out = tmp_path / "output"
    env_models = tmp_path / "models"
    proc = subprocess.run([sys.executable, "-m", "facesmith.core.cli", "run", str(WORKFLOWS_DIR / f"{name}.json"),
                           "--out", str(out), "--models-dir", str(env_models)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted(out.rglob("*.png"))
    assert pngs, "no images written"
    meta = Image.open(pngs[0]).info
    assert "workflow" in meta and "prompt" in meta
    assert json.loads(meta["workflow"])["nodes"]
    assert "done" in proc.stderr  # one progress line per node


TITLE_H = 30  # LiteGraph draws a node's title bar above its pos


def _rect(node: dict) -> tuple:
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE_H, x + w, y + h


@pytest.mark.parametrize("path", sorted(WORKFLOWS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_ui_nodes_do_not_overlap_and_fit_their_widgets(path):
    """Node rectangles (title bar included) are disjoint, and each node is at least as tall as its socket rows
    (20 px) plus its widget rows (24 px), so no node covers another or hides its own widgets."""
    nodes = json.loads(path.read_text())["nodes"]
    for node in nodes:
        rows = max(len([i for i in node.get("inputs", []) if "widget" not in i]), len(node.get("outputs", [])), 1)
        need = rows * 20 + 24 * len(node.get("widgets_values") or [])
        assert node["size"][1] >= need, f"{path.name}: node {node['id']} ({node['type']}) is {node['size'][1]} px " \
                                        f"tall, its sockets and widgets need {need}"
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax0, ay0, ax1, ay1 = _rect(a)
            bx0, by0, bx1, by1 = _rect(b)
            overlap = (min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0))
            assert overlap[0] <= 0 or overlap[1] <= 0, \
                f"{path.name}: node {a['id']} ({a['type']}) and node {b['id']} ({b['type']}) overlap by " \
                f"{overlap[0]}x{overlap[1]} px"


@pytest.mark.parametrize("path", sorted(WORKFLOWS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_template_thumbnail_beside_each_workflow(path):
    """ComfyUI's template browser (frontend 1.27) asks /api/workflow_templates/<pack>/<name>.jpg for each listed
    <name>.json: a small real JPEG must be there."""
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} missing: python -m facesmith.core.workflow_defs --thumbnails RUN_DIR"
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.size == (256, 256)
        assert len(im.convert("L").getcolors(256 * 256) or []) > 16  # a picture, not a flat placeholder
    assert thumb.stat().st_size < 64 * 1024


@pytest.mark.slow
@built
def test_demo_in_two_worker_processes_keeps_the_workflow_order(tmp_path):
    """`facesmith demo` runs workflows in one process per core (at most 2, spawned, the longest first); the report
    and the runs keep the workflows' order and every saved image of a Generate is judged."""
    from facesmith.core.demo import run_demo

    names = ["understand_describe_photo", "synthface_text_to_image"]
    summary = run_demo(tmp_path / "demo", [WORKFLOWS_DIR / f"{n}.json" for n in names], build_missing=False,
                       workers=2)
    assert summary["worker processes"] == 2
    assert [r["workflow"] for r in summary["runs"]] == [f"{n}.json" for n in names]
    assert summary["images judged"] >= 4 and 0.0 <= summary["mean prompt adherence"] <= 1.0
    report = (tmp_path / "demo" / "report.html").read_text()
    assert report.index("understand_describe_photo") < report.index("synthface_text_to_image")
