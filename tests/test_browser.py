"""Optional: FaceSmith in a real ComfyUI editor, driven by a headless Chromium (issue 18).

Runs only when ``FACESMITH_COMFYUI_URL`` points at a running ComfyUI on this machine (loopback only, like
tests/test_comfyui_integration.py) that has this pack in its ``custom_nodes``, and Debian's ``chromium`` and
``chromium-driver`` plus the ``selenium`` Python package are installed; otherwise every test here is skipped with the
reason. Selenium is imported lazily and is given the chromedriver path explicitly (``SE_OFFLINE=true``): it never
downloads a browser or a driver. It is not a dependency of the pack.

What it checks, in the editor the server serves (ComfyUI's comfyui-frontend-package):

- every shipped UI workflow (``workflows/*.json``) loads through ``app.loadGraphData`` with no missing-node dialog
  (no dialog in the DOM mentions missing nodes, and every loaded node's type is registered with LiteGraph) and no two
  nodes overlapping (node rectangles from ``node.pos``/``node.size`` plus the title bar,
  ``LiteGraph.NODE_TITLE_HEIGHT``); a screenshot of each;
- ``synthface_text_to_image`` queued from the browser (``app.queuePrompt``) runs, and the Judge Faces report appears
  in the read-only box web/facesmith.js adds to that node (the ``facesmith_result`` widget and its textarea in the
  DOM), with the judge's words in it; a screenshot;
- ``e4t_train_domain_encoder`` queued from the browser (under a fresh encoder name, so nothing of the user's is
  overwritten or resumed; the encoder is deleted afterwards) makes the live loss chart move: the points web/facesmith.js keeps on the node's ``facesmith_loss_chart``
  widget grow over time with increasing steps; screenshots while it trains and at the end.

Environment:

- ``FACESMITH_COMFYUI_URL``: the server (required to run anything here);
- ``FACESMITH_COMFYUI_TIMEOUT``: seconds one queued workflow may take (default 900; CPU runs are slow);
- ``FACESMITH_TEST_ARTIFACTS``: folder for the screenshots (default: a pytest temporary folder, printed);
- ``FACESMITH_CHROMIUM`` / ``FACESMITH_CHROMEDRIVER``: other browser / driver paths (default: ``chromium`` and
  ``chromedriver`` on PATH, i.e. /usr/bin from Debian's packages).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: see [tool.pytest.ini_options] markers

ROOT = Path(__file__).resolve().parents[1]
ENV_URL = "FACESMITH_COMFYUI_URL"
ENV_TIMEOUT = "FACESMITH_COMFYUI_TIMEOUT"
ENV_ARTIFACTS = "FACESMITH_TEST_ARTIFACTS"
UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
PAGE_TIMEOUT_S = 120.0  # editor load: object_info + every extension
POLL_S = 0.5
MISSING_WORDS = ("missing", "not found")  # the frontend's missing-nodes dialog ("Some Nodes Are Missing", ...)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _timeout_s() -> float:
    return float(os.environ.get(ENV_TIMEOUT) or 900)


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def comfy_url() -> str:
    url = os.environ.get(ENV_URL)
    if not url:
        pytest.skip(f"{ENV_URL} not set: real-ComfyUI browser test skipped")
    host = urllib.parse.urlsplit(url).hostname or ""
    if not _is_loopback(host):
        pytest.skip(f"{ENV_URL}={url!r} is not a loopback address: this test only talks to a ComfyUI on this machine")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/system_stats", timeout=30) as resp:
            assert resp.status == 200
    except OSError as exc:
        pytest.fail(f"{ENV_URL}={url!r} is set but ComfyUI does not answer: {exc}")
    return url.rstrip("/")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get(ENV_ARTIFACTS) or tmp_path_factory.mktemp("facesmith-browser"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def driver(comfy_url):
    chromium = os.environ.get("FACESMITH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = os.environ.get("FACESMITH_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not Path(chromium).is_file():
        pytest.skip("chromium not installed (apt-get install chromium chromium-driver): browser test skipped")
    if not chromedriver or not Path(chromedriver).is_file():
        pytest.skip("chromedriver not installed (apt-get install chromium-driver): browser test skipped")
    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium): browser test skipped")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    drv.set_script_timeout(PAGE_TIMEOUT_S)
    try:
        drv.get(comfy_url + "/")
        _wait(drv, "return !!(window.app && window.app.graph && window.LiteGraph && "
                   "window.LiteGraph.registered_node_types['FaceSmithJudgeFaces'] && window.app.canvas)",
              PAGE_TIMEOUT_S, "the ComfyUI editor (with FaceSmith's nodes registered) to load")
        time.sleep(2.0)  # first-run popups settle
        _close_dialogs(drv)
        version = drv.capabilities.get("browserVersion", "?")
        print(f"\nchromium {version}; ComfyUI editor at {comfy_url}: "
              f"frontend {drv.execute_script('return window.__COMFYUI_FRONTEND_VERSION__ || null')}")
        yield drv
    finally:
        drv.quit()


# ------------------------------------------------------------------------------------------------------ helpers


def _wait(drv, script: str, timeout_s: float, what: str, *args):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = drv.execute_script(script, *args)
        if value:
            return value
        time.sleep(POLL_S)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _close_dialogs(drv) -> None:
    """Close whatever dialogs the editor opened on its own (template browser, release notes, ...)."""
    drv.execute_script("""
        for (const b of document.querySelectorAll('.p-dialog .p-dialog-close-button, .p-dialog-header-close'))
            b.click();
    """)
    time.sleep(0.5)


def _dialog_texts(drv) -> list[str]:
    return drv.execute_script("""
        return [...document.querySelectorAll('.p-dialog, [role=dialog], .comfy-modal')]
            .filter((el) => el.offsetParent !== null || getComputedStyle(el).display !== 'none')
            .map((el) => el.innerText || '');
    """)


def _load(drv, workflow: dict, name: str) -> None:
    err = drv.execute_async_script("""
        const [wf, name, done] = arguments;
        window.app.loadGraphData(wf, true, true, name).then(() => done(null), (e) => done(String(e)));
    """, workflow, name)
    assert err is None, f"app.loadGraphData({name}) failed: {err}"
    time.sleep(1.0)  # the canvas draws, dialogs (if any) open


def _graph_nodes(drv) -> list[dict]:
    return drv.execute_script("""
        const TH = window.LiteGraph.NODE_TITLE_HEIGHT;
        return window.app.graph._nodes.map((n) => ({
            id: n.id, type: n.type, title: n.title,
            registered: !!window.LiteGraph.registered_node_types[n.type],
            x: n.pos[0], y: n.pos[1] - TH, w: n.size[0], h: n.size[1] + TH,
            collapsed: !!(n.flags && n.flags.collapsed),
        }));
    """)


def _overlaps(nodes: list[dict]) -> list[str]:
    found = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ix = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            iy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if ix > 0 and iy > 0:
                found.append(f"#{a['id']} {a['type']} and #{b['id']} {b['type']} overlap by {ix:.0f}x{iy:.0f} px")
    return found


def _install_event_log(drv) -> None:
    """Record the websocket events the editor receives (window.__facesmithEvents), once per page."""
    drv.execute_script("""
        if (window.__facesmithEvents) { window.__facesmithEvents.length = 0; return; }
        window.__facesmithEvents = [];
        const api = window.app.api;
        for (const type of ['execution_start', 'execution_success', 'execution_error', 'execution_interrupted'])
            api.addEventListener(type, (e) => window.__facesmithEvents.push({type, detail: e.detail}));
    """)


def _events(drv) -> list[dict]:
    return drv.execute_script("return window.__facesmithEvents || []")


def _queue(drv) -> None:
    err = drv.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.resolve(window.app.queuePrompt(0, 1)).then(() => done(null), (e) => done(String(e)));
    """)
    assert err is None, f"app.queuePrompt failed: {err}"
    errors = drv.execute_script("return window.app.lastNodeErrors || null")
    assert not errors, f"ComfyUI refused the queued workflow: {json.dumps(errors)[:2000]}"


def _finished(drv) -> dict | None:
    for ev in _events(drv):
        if ev["type"] in ("execution_success", "execution_error", "execution_interrupted"):
            return ev
    return None


def _wait_finished(drv, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ev = _finished(drv)
        if ev:
            return ev
        time.sleep(POLL_S)
    drv.execute_script("window.app.api.interrupt && window.app.api.interrupt()")
    pytest.fail(f"the queued workflow did not finish within {timeout_s:.0f} s (it was interrupted)")


def _fit_view(drv) -> None:
    """Zoom the canvas so the whole graph is on the screenshot."""
    drv.execute_script("""
        const c = window.app.canvas, ns = window.app.graph._nodes, TH = window.LiteGraph.NODE_TITLE_HEIGHT;
        if (!ns.length) return;
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const n of ns) {
            x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - TH);
            x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
        }
        const W = c.canvas.clientWidth, H = c.canvas.clientHeight, bw = x1 - x0, bh = y1 - y0;
        const s = Math.min(W / (bw + 80), H / (bh + 80), 1);
        if ('min_font_size_for_lod' in c) c.min_font_size_for_lod = 0;  // full detail (this page only, not saved)
        c.ds.scale = s;
        c.ds.offset = [(W / s - bw) / 2 - x0, (H / s - bh) / 2 - y0];
        c.setDirty(true, true);
    """)
    time.sleep(0.5)


def _center_on(drv, node_type: str) -> None:
    drv.execute_script("""
        const n = window.app.graph._nodes.find((n) => n.type === arguments[0]);
        if (n) { window.app.canvas.centerOnNode(n); window.app.canvas.setDirty(true, true); }
    """, node_type)
    time.sleep(0.5)


def _remove_trained(drv, name: str) -> None:
    """Delete the encoder this test trained (NAME.safetensors, whose path Train Domain Encoder's result box shows,
    and its work folder models/facesmith/.work/e4t/NAME): the server is on this machine (loopback only)."""
    text = drv.execute_script("""
        const n = window.app.graph._nodes.find((n) => n.type === 'FaceSmithTrainDomainEncoder');
        const w = n && n.widgets && n.widgets.find((w) => w.name === 'facesmith_result');
        return w ? w.value : '';
    """) or ""
    for line in text.replace("\n", " ").split():
        path = Path(line)
        if path.name == f"{name}.safetensors" and path.is_file():
            path.unlink()
            work = path.parent.parent / ".work" / path.parent.name / name
            if work.is_dir():
                shutil.rmtree(work)


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_workflow_loads_without_missing_nodes_or_overlaps(driver, artifacts, path):
    workflow = json.loads(path.read_text())
    _close_dialogs(driver)
    _load(driver, workflow, path.stem)
    _fit_view(driver)
    driver.save_screenshot(str(artifacts / f"load_{path.stem}.png"))

    missing_dialogs = [t for t in _dialog_texts(driver) if any(w in t.lower() for w in MISSING_WORDS)]
    assert not missing_dialogs, f"{path.name}: the editor shows a missing-node dialog: {missing_dialogs}"
    nodes = _graph_nodes(driver)
    assert len(nodes) == len(workflow["nodes"]), f"{path.name}: {len(workflow['nodes'])} nodes in the file, " \
                                                 f"{len(nodes)} in the editor"
    unregistered = [f"#{n['id']} {n['type']}" for n in nodes if not n["registered"]]
    assert not unregistered, f"{path.name}: node types the editor does not know: {unregistered}"
    overlaps = _overlaps(nodes)
    assert not overlaps, f"{path.name}: overlapping nodes: {overlaps}"
    print(f"\n{path.name}: {len(nodes)} nodes, all registered, 0 overlaps")


def test_checks_catch_missing_nodes_and_overlaps(driver, artifacts):
    """The two checks above are not blind: a node type nobody registered brings up the frontend's missing-node
    dialog (and is unregistered), and a node moved onto another is reported as an overlap."""
    path = ROOT / "workflows" / "synthface_text_to_image.json"
    workflow = json.loads(path.read_text())
    broken = json.loads(json.dumps(workflow))
    broken["nodes"][0]["type"] = "FaceSmithNoSuchNodeForTheBrowserTest"
    _close_dialogs(driver)
    _load(driver, broken, "facesmith_browser_test_missing_node")
    driver.save_screenshot(str(artifacts / "control_missing_node_dialog.png"))
    texts = _dialog_texts(driver)
    assert any("FaceSmithNoSuchNodeForTheBrowserTest" in t for t in texts), \
        f"no missing-node dialog naming the unknown type; dialogs: {texts}"
    assert [t for t in texts if any(w in t.lower() for w in MISSING_WORDS)], f"dialog without 'missing': {texts}"
    unknown = [n for n in _graph_nodes(driver) if not n["registered"]]
    assert [n["type"] for n in unknown] == ["FaceSmithNoSuchNodeForTheBrowserTest"], unknown
    _close_dialogs(driver)
    assert not [t for t in _dialog_texts(driver) if any(w in t.lower() for w in MISSING_WORDS)], \
        "the missing-node dialog did not close"

    _load(driver, workflow, path.stem)
    assert not _overlaps(_graph_nodes(driver))
    driver.execute_script("""
        const [a, b] = window.app.graph._nodes;
        b.pos = [a.pos[0] + 10, a.pos[1] + 10];
    """)
    overlaps = _overlaps(_graph_nodes(driver))
    assert len(overlaps) == 1, f"a node moved onto another is not seen as one overlap: {overlaps}"


def test_queue_shows_judge_report_on_node(driver, artifacts):
    path = ROOT / "workflows" / "synthface_text_to_image.json"
    _close_dialogs(driver)
    _load(driver, json.loads(path.read_text()), path.stem)
    seed = int.from_bytes(os.urandom(4), "little")  # a fresh seed: ComfyUI's cache cannot answer for the run
    driver.execute_script("""
        const n = window.app.graph._nodes.find((n) => n.type === 'FaceSmithGenerate');
        n.widgets.find((w) => w.name === 'seed').value = arguments[0];
    """, seed)
    _install_event_log(driver)
    t0 = time.monotonic()
    _queue(driver)
    report = None
    deadline = t0 + _timeout_s()
    while time.monotonic() < deadline and report is None:
        report = driver.execute_script("""
            const n = window.app.graph._nodes.find((n) => n.type === 'FaceSmithJudgeFaces');
            const w = n && n.widgets && n.widgets.find((w) => w.name === 'facesmith_result');
            if (!w || !w.value) return null;
            const el = w.inputEl || w.element;
            return {value: w.value, dom: el ? el.value : null, inDocument: !!(el && el.isConnected),
                    readOnly: !!(el && el.readOnly)};
        """)
        ev = _finished(driver)
        if report is None and ev is not None:
            assert ev["type"] == "execution_success", f"the workflow failed: {json.dumps(ev)[:3000]}"
            report = driver.execute_script("""
                const n = window.app.graph._nodes.find((n) => n.type === 'FaceSmithJudgeFaces');
                const w = n && n.widgets && n.widgets.find((w) => w.name === 'facesmith_result');
                const el = w && (w.inputEl || w.element);
                return w && w.value ? {value: w.value, dom: el ? el.value : null,
                                       inDocument: !!(el && el.isConnected), readOnly: !!(el && el.readOnly)} : null;
            """)
            assert report is not None, "the workflow succeeded but no judge report box appeared on Judge Faces"
        if report is None:
            time.sleep(POLL_S)
    seconds = time.monotonic() - t0
    if report is None:
        driver.execute_script("window.app.api.interrupt && window.app.api.interrupt()")
        pytest.fail(f"no judge report on the Judge Faces node within {_timeout_s():.0f} s (interrupted)")
    _center_on(driver, "FaceSmithJudgeFaces")
    driver.save_screenshot(str(artifacts / "queued_synthface_text_to_image_judge_report.png"))
    text = report["value"]
    assert "image(s) judged" in text and "image 1:" in text, f"not the judge's report: {text!r}"
    assert report["dom"] == text, "the box on the node does not show the report"
    assert report["inDocument"] and report["readOnly"], f"the report box is not a read-only element on the page: " \
                                                        f"{report}"
    ev = _wait_finished(driver, max(30.0, deadline - time.monotonic()))
    assert ev["type"] == "execution_success", f"the workflow did not succeed: {json.dumps(ev)[:3000]}"
    print(f"\njudge report on the node {seconds:.1f} s after queueing (seed {seed}): {text.splitlines()[0]!r}")


def test_queue_training_moves_loss_chart(driver, artifacts):
    path = ROOT / "workflows" / "e4t_train_domain_encoder.json"
    _close_dialogs(driver)
    _load(driver, json.loads(path.read_text()), path.stem)
    name = f"facesmith-browser-test-{uuid.uuid4().hex[:8]}"  # not the user's demo-e4t; the chart starts at step 1
    total = driver.execute_script("""
        const n = window.app.graph._nodes.find((n) => n.type === 'FaceSmithTrainDomainEncoder');
        n.widgets.find((w) => w.name === 'name').value = arguments[0];
        return n.widgets.find((w) => w.name === 'steps').value;
    """, name)
    _install_event_log(driver)
    t0 = time.monotonic()
    _queue(driver)
    read_chart = """
        const n = window.app.graph._nodes.find((n) => n.type === 'FaceSmithTrainDomainEncoder');
        const w = n && n.widgets && n.widgets.find((w) => w.name === 'facesmith_loss_chart');
        return w ? {points: w.points.map((p) => [Number(p[0]), Number(p[1])]), total: w.total, label: w.label} : null;
    """
    samples = []  # (seconds, number of points, last step)
    shot_mid = False
    deadline = t0 + _timeout_s()
    chart = None
    while time.monotonic() < deadline:
        chart = driver.execute_script(read_chart)
        if chart and chart["points"]:
            last = (len(chart["points"]), chart["points"][-1][0])
            if not samples or samples[-1][1:] != last:
                samples.append((round(time.monotonic() - t0, 1), *last))
            if not shot_mid and len(samples) >= 3:
                _center_on(driver, "FaceSmithTrainDomainEncoder")
                driver.save_screenshot(str(artifacts / "queued_e4t_train_domain_encoder_chart_training.png"))
                shot_mid = True
            if chart["points"][-1][0] >= total:
                break
        ev = _finished(driver)
        if ev is not None:
            assert ev["type"] == "execution_success", f"the training workflow failed: {json.dumps(ev)[:3000]}"
            chart = driver.execute_script(read_chart)
            break
        time.sleep(POLL_S)
    else:
        driver.execute_script("window.app.api.interrupt && window.app.api.interrupt()")
        pytest.fail(f"training did not reach step {total} within {_timeout_s():.0f} s (interrupted); chart: {samples}")
    _center_on(driver, "FaceSmithTrainDomainEncoder")
    driver.save_screenshot(str(artifacts / "queued_e4t_train_domain_encoder_chart_done.png"))
    grown = _overlaps(_graph_nodes(driver))  # the chart and text box make the node taller (reported, not asserted)
    print(f"\noverlaps after the run (the node grew by its chart and result box): {grown or 'none'}")
    print(f"\nloss chart samples (seconds, points, last step): {samples}")

    assert chart and chart["points"], "no loss chart on Train Domain Encoder"
    steps = [p[0] for p in chart["points"]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), f"chart steps not increasing: {steps}"
    assert steps[0] == 1 and steps[-1] == total, f"chart covers steps {steps[0]}..{steps[-1]}, expected 1..{total}"
    assert all(v == v and abs(v) != float("inf") for _, v in chart["points"]), "non-finite loss on the chart"
    assert chart["total"] == total
    growth = [n for _, n, _ in samples]
    assert len(samples) >= 3 and growth == sorted(growth) and growth[-1] > growth[0], \
        f"the chart did not move while training (seen only {samples})"
    ev = _wait_finished(driver, max(30.0, deadline - time.monotonic()))
    assert ev["type"] == "execution_success", f"the training workflow did not succeed: {json.dumps(ev)[:3000]}"
    _remove_trained(driver, name)
    print(f"chart: {len(chart['points'])} points, steps {steps[0]}..{steps[-1]}, workflow done after "
          f"{time.monotonic() - t0:.1f} s")
