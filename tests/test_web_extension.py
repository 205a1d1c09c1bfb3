"""The editor extension ``web/facesmith.js`` (text results and the live loss chart on the nodes).

The pack exports ``WEB_DIRECTORY`` and the event name the JS listens to is the one the server side sends
(``nodes/comfy_bridge.LOSS_EVENT``). Where Node.js is installed, the script runs against stand-ins of the frontend
modules it imports (``tests/web/harness.mjs``); without Node.js that part is skipped. It has not been run in a
browser here (no browser on the test machines)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "web" / "facesmith.js"

STUBS = {
    "app.js": """export const state = { extensions: [], listeners: {}, graph: { nodes: {} } };
state.graph.getNodeById = (id) => state.graph.nodes[id] ?? null;
export const app = { registerExtension: (e) => state.extensions.push(e), graph: state.graph };
""",
    "api.js": """import { state } from "./app.js";
export const api = { addEventListener: (name, f) => (state.listeners[name] ??= []).push(f) };
""",
    "widgets.js": """export const ComfyWidgets = { STRING: (node, name, spec, app) => {
  const widget = { name, value: "", options: {}, inputEl: { readOnly: false, style: {}, value: "" } };
  node.widgets.push(widget); return { widget }; } };
""",
}


def test_pack_exports_the_web_directory_with_the_extension():
    import facesmith
    from facesmith.nodes.comfy_bridge import LOSS_EVENT

    web = ROOT / facesmith.WEB_DIRECTORY
    assert web.resolve() == JS.parent and JS.is_file()
    src = JS.read_text()
    assert f'const LOSS_EVENT = "{LOSS_EVENT}";' in src
    assert 'from "../../scripts/app.js"' in src  # served as /extensions/<pack>/facesmith.js


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed: web/facesmith.js not executed")
def test_extension_shows_text_results_and_draws_the_loss_chart(tmp_path):
    (tmp_path / "scripts").mkdir()
    for name, text in STUBS.items():
        (tmp_path / "scripts" / name).write_text(text)
    (tmp_path / "extensions" / "facesmith").mkdir(parents=True)
    shutil.copy(JS, tmp_path / "extensions" / "facesmith" / "facesmith.js")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    out = subprocess.run(["node", str(ROOT / "tests" / "web" / "harness.mjs"), str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["text"] == "second run" and seen["textWidgets"] == 1 and seen["readOnly"] is True
    assert seen["serialize"] == [False, False, False, False]  # never saved with the workflow or sent in a prompt
    assert seen["otherWrapped"] == "undefined"  # other packs' nodes untouched
    assert seen["pointsAfterReset"] == [[1, 5.0]] and seen["total"] == 10 and seen["chartHeight"] == 120
    assert "stroke" in seen["drew"] and any("step 3/10" in s and "loss 1.000" in s for s in seen["labels"])
