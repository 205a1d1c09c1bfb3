"""``facesmith demo``: the main job on the built-in SynthFace default.

It checks (or builds) the built-in assets, runs every shipped workflow headless through the same runner as
``facesmith run``, and writes the images plus a one-page HTML report: each image beside its prompt and the judges'
scores (attributes seen, adherence to the prompt, identity similarity to the workflow's reference face).
"""
from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("facesmith")

PACK_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = PACK_ROOT / "workflows"
REFERENCE_CLASSES = ("FaceSmithSynthFace", "LoadImage")


def shipped_workflows() -> list[Path]:
    """UI-format workflows (what the template browser shows); API twins live in workflows/api/."""
    return sorted(WORKFLOWS_DIR.glob("*.json"))


def _source_of(prompt: dict, node_id: str, input_name: str):
    link = prompt[node_id]["inputs"].get(input_name)
    return (str(link[0]), int(link[1])) if isinstance(link, list) and len(link) == 2 else None


def _prompt_for(prompt: dict, save_id: str) -> str | None:
    """The text prompt of the Generate node feeding a SaveImage node (following the link), if there is one."""
    src = _source_of(prompt, save_id, "images")
    if src is None:
        return None
    node = prompt.get(src[0], {})
    value = node.get("inputs", {}).get("prompt")
    return value if isinstance(value, str) else None


def _reference_image(prompt: dict, result):
    for nid, node in prompt.items():
        if node.get("class_type") in REFERENCE_CLASSES and nid in result.outputs:
            return result.outputs[nid][0][:1]
    return None


def judge_rows(workflow_name: str, result, out_dir: Path) -> list[dict]:
    """One report row per saved image: file, prompt, attributes seen, adherence, identity similarity."""
    from .images import comfy_to_numpy
    from .judges.attributes import AttributeJudge
    from .judges.metrics import attribute_adherence, identity_similarity, recognizer
    from .synthface.captions import parse_caption

    judge = AttributeJudge.load()
    ref = _reference_image(result.prompt, result)
    rows = []
    for nid, node in result.prompt.items():
        if node.get("class_type") != "SaveImage" or nid not in result.outputs and nid not in result.ui:
            continue
        src = _source_of(result.prompt, nid, "images")
        if src is None or src[0] not in result.outputs:
            continue
        images = result.outputs[src[0]][src[1]]
        files = [Path(out_dir, i.get("subfolder", ""), i["filename"])
                 for i in result.ui.get(nid, {}).get("images", [])]
        text = _prompt_for(result.prompt, nid)
        if result.prompt[src[0]].get("class_type") != "FaceSmithGenerate":  # e.g. a loss graph: shown, not judged
            rows += [{"workflow": workflow_name, "node": nid, "file": str(f), "prompt": text, "asked": {},
                      "seen": {}, "adherence": None, "identity_similarity": None} for f in files]
            continue
        asked = parse_caption(text) if text else {}
        seen = judge.predict(images)
        sims = identity_similarity(images, ref) if ref is not None else [None] * len(seen)
        for i, attrs in enumerate(seen):
            adh = attribute_adherence(images[i:i + 1], [asked])["mean"] if asked else None
            rows.append({"workflow": workflow_name, "node": nid, "file": str(files[i]) if i < len(files) else None,
                         "prompt": text, "asked": asked, "seen": {k: attrs[k] for k in asked} or attrs,
                         "adherence": adh, "identity_similarity": None if sims[i] is None else float(sims[i]),
                         "same_person": None if sims[i] is None else bool(sims[i] > recognizer().threshold)})
    if ref is not None:
        rows.insert(0, {"workflow": workflow_name, "node": "reference", "file": None, "prompt": "reference face",
                        "reference": comfy_to_numpy(ref)[0], "asked": {}, "seen": {}, "adherence": None,
                        "identity_similarity": None})
    return rows


def write_report(out_dir: Path, rows: list[dict], summary: dict) -> Path:
    from PIL import Image

    from .formats import atomic_write_text

    cells = []
    references: dict[str, str] = {}
    for r in rows:
        beside = ""
        if r.get("reference") is not None:
            ref_path = out_dir / f"{r['workflow']}_reference.png"
            Image.fromarray(r["reference"]).save(ref_path)
            src = references[r["workflow"]] = ref_path.name
        elif r["file"]:
            src = Path(r["file"]).relative_to(out_dir).as_posix()
        else:
            continue
        facts = []
        if r["adherence"] is not None:
            facts.append(f"adherence {r['adherence']:.2f}")
        if r["identity_similarity"] is not None:
            verdict = "same person" if r.get("same_person") else "NOT the same person"
            facts.append(f"identity sim {r['identity_similarity']:.2f}: the recognizer says {verdict}")
            if r["workflow"] in references:  # the personalised image beside its reference
                beside = (f'<img src="{html.escape(references[r["workflow"]])}" width="80" height="80" '
                          'title="reference">')
        seen = ", ".join(f"{k}: {v}" for k, v in r["seen"].items())
        cells.append(
            f'<figure>{beside}<img src="{html.escape(src)}" width="160" height="160">'
            f"<figcaption><b>{html.escape(r['workflow'])}</b><br>{html.escape(r['prompt'] or '')}"
            f"<br><small>judge sees: {html.escape(seen)}</small><br>{html.escape(' · '.join(facts))}"
            "</figcaption></figure>")
    summary_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                           for k, v in summary.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>FaceSmith demo</title>
<style>body{{font-family:sans-serif;margin:20px}}figure{{display:inline-block;width:260px;vertical-align:top;
margin:6px}}img{{image-rendering:pixelated;border:1px solid #ccc}}figcaption{{font-size:12px}}
td{{padding:2px 8px;border-bottom:1px solid #eee}}</style></head><body>
<h1>FaceSmith demo (built-in SynthFace domain)</h1><table>{summary_rows}</table>
<p>Scores come from the SynthFace judges (evaluation only; nothing trains against them): <i>adherence</i> is the
share of attributes the prompt asks for that the attribute judge sees; <i>identity sim</i> is the recognizer's
cosine similarity to the workflow's reference face.</p>
{''.join(cells)}</body></html>"""
    path = out_dir / "report.html"
    atomic_write_text(path, page, overwrite=True)
    return path


FIRST = ("e4t_train_domain_encoder",)  # the longest workflow starts first, so the others fill the other worker


def _node_classes():
    from .runner.command import load_node_classes

    classes, problem = load_node_classes()
    if problem:
        raise RuntimeError(f"FaceSmith nodes failed to load: {problem}")
    return classes


_LOADED: dict = {}  # node outputs reused between the workflows of one process (ComfyUI's cache between prompts)


def _run_one(wf: Path, out_dir: Path, classes=None) -> tuple[dict, list[dict]]:
    """Run one workflow and judge its images: (timing row, report rows). Also the body of a worker process."""
    from .runner.execute import run_workflow

    classes = classes or _node_classes()
    log.info("demo: running %s", wf.name)
    t = time.time()
    result = run_workflow(wf, classes, out_dir, input_dir=out_dir / "input", progress=True, cache=_LOADED)
    ran = {"workflow": wf.name, "seconds": round(time.time() - t, 2), "files": len(result.files)}
    return ran, judge_rows(wf.stem, result, out_dir)


def default_workers(n_workflows: int) -> int:
    """One worker process per CPU core, at most 2: each runs torch on one thread (the built-in models are too small
    to gain from more), and a third process would only share the same cores."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores, n_workflows))


def run_demo(out_dir: Path, workflows: list[Path] | None = None, build_missing: bool = True,
             workers: int | None = None) -> dict:
    """Run the workflows (default: every shipped one) and write the report. ``workers`` > 1 runs them in that many
    processes (spawned; each loads its own models), the longest first; the report keeps the workflows' order."""
    from .assets import ensure_all

    t0 = time.time()
    still_missing = ensure_all(build_missing)
    if still_missing:
        raise RuntimeError("missing built-in assets: " + ", ".join(a.name for a in still_missing))
    out_dir.mkdir(parents=True, exist_ok=True)
    wfs = list(workflows or shipped_workflows())
    workers = default_workers(len(wfs)) if workers is None else max(1, int(workers))
    if workers == 1:
        classes = _node_classes()
        done = [_run_one(wf, out_dir, classes) for wf in wfs]
    else:
        from .workers import in_spawned_processes

        order = sorted(range(len(wfs)), key=lambda i: wfs[i].stem not in FIRST)
        by_index = dict(zip(order, in_spawned_processes([(_run_one, (wfs[i], out_dir), {}) for i in order], workers)))
        done = [by_index[i] for i in range(len(wfs))]
    ran = [r for r, _ in done]
    rows = [row for _, rs in done for row in rs]
    adh = [r["adherence"] for r in rows if r["adherence"] is not None]
    sims = [r["identity_similarity"] for r in rows if r["identity_similarity"] is not None]
    summary = {"workflows run": len(ran), "images judged": len([r for r in rows if r["file"]]),
               "mean prompt adherence": round(float(np.mean(adh)), 3) if adh else "n/a",
               "mean identity similarity to reference": round(float(np.mean(sims)), 3) if sims else "n/a",
               "seconds": round(time.time() - t0, 1), "worker processes": workers}
    report = write_report(out_dir, rows, summary)
    summary["report"] = str(report)
    summary["runs"] = ran
    return summary


def add_arguments(p) -> None:
    p.add_argument("--out", default="facesmith-demo", help="output folder (images + report.html)")
    p.add_argument("--models-dir", help="user models folder (default: $FACESMITH_MODELS or ./models)")
    p.add_argument("--workflow", action="append", help="run only this workflow file (repeatable)")
    p.add_argument("--no-build", action="store_true", help="fail instead of training missing built-in assets")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per core, at most 2; 1 runs everything in this process)")


def main(args) -> int:
    import os

    if args.models_dir:
        os.environ["FACESMITH_MODELS"] = args.models_dir
    summary = run_demo(Path(args.out).resolve(), [Path(w) for w in args.workflow] if args.workflow else None,
                       build_missing=not args.no_build, workers=args.workers)
    print(json.dumps(summary, indent=2))
    return 0
