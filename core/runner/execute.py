"""Running a workflow headless: load, convert, override, validate (all errors at once), then execute the nodes in
topological order with ComfyUI's calling convention (inputs as lists mapped over the node, INPUT_IS_LIST,
OUTPUT_IS_LIST, ``{"ui", "result"}`` returns, hidden PROMPT/EXTRA_PNGINFO/UNIQUE_ID)."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..formats import ensure_folder
from ..progress import Interrupted, Progress, headless_progress, tqdm_progress
from .comfy_core_nodes import directories
from .errors import ExecutionError, NodeError, WorkflowError
from .graph import check_depth, convert, detect_format, load_workflow_file
from .spec import hidden_inputs, is_link, return_types
from .validate import apply_overrides, check, execution_order

ENV_OUTPUT = "FACESMITH_OUTPUT"  # core/paths.output_dir() reads it when running outside ComfyUI


@dataclass
class RunResult:
    prompt: dict  # the API-format prompt that ran (after conversion, overrides and type conversion)
    order: list[str] = field(default_factory=list)  # node ids in the order they ran
    outputs: dict[str, tuple] = field(default_factory=dict)  # node id -> one value per output
    ui: dict[str, dict] = field(default_factory=dict)  # node id -> the node's "ui" dict
    files: list[Path] = field(default_factory=list)  # files the nodes reported writing (output and temp)
    timings: dict[str, float] = field(default_factory=dict)  # node id -> seconds
    skipped: list[str] = field(default_factory=list)  # nodes not feeding any output node (not run, as in ComfyUI)
    warnings: list[str] = field(default_factory=list)

    def output(self, node_id: Union[str, int], index: int = 0) -> Any:
        return self.outputs[str(node_id)][index]


def prepare(workflow: Union[dict, str, Path], node_classes: dict, overrides: Any = None,
            extra_pnginfo: Optional[dict] = None) -> tuple[dict, Optional[dict], list[str]]:
    """Load/convert/override/validate. Returns (validated API prompt, extra_pnginfo, warnings) or raises
    WorkflowError with every problem found."""
    source = None
    if isinstance(workflow, (str, Path)):
        source = str(workflow)
        workflow = load_workflow_file(workflow)
    else:
        check_depth(workflow)
    try:
        fmt = detect_format(workflow)
    except WorkflowError as e:
        raise WorkflowError(e.errors, source) from None
    errors: list[NodeError] = []
    warnings: list[str] = []
    virtual = None
    if fmt == "ui":
        conv = convert(workflow, node_classes)
        prompt, virtual = conv.prompt, conv.virtual
        errors += conv.errors
        warnings += conv.warnings
        if extra_pnginfo is None:
            extra_pnginfo = {"workflow": workflow}
    elif fmt == "api_wrapped":
        prompt = workflow["prompt"]
        if extra_pnginfo is None:
            extra_pnginfo = (workflow.get("extra_data") or {}).get("extra_pnginfo")
    else:
        prompt = workflow
    prompt = {str(k): v for k, v in prompt.items()}
    if overrides:
        prompt, override_errors = apply_overrides(prompt, overrides, node_classes, virtual)
        errors += override_errors
    prompt, check_errors, check_warnings = check(prompt, node_classes)
    # conversion already named problems on these nodes; don't repeat a "missing input" for the same input
    seen = {(e.node_id, e.input) for e in errors}
    errors += [e for e in check_errors if (e.node_id, e.input) not in seen or e.kind != "missing_input"]
    warnings += check_warnings
    if errors:
        raise WorkflowError(errors, source)
    return prompt, extra_pnginfo, warnings


def _call_node(cls, obj, inputs: dict, raw_outputs: dict, prompt: dict, extra_pnginfo, node_id: str):
    """ComfyUI's get_input_data + _map_node_over_list + get_output_data. Returns (outputs as lists, ui dict)."""
    data: dict[str, list] = {}
    for name, value in inputs.items():
        if is_link(value):
            data[name] = raw_outputs[value[0]][value[1]]
        else:
            data[name] = [value]
    for name, kind in hidden_inputs(cls).items():
        if kind == "PROMPT":
            data[name] = [prompt]
        elif kind == "EXTRA_PNGINFO":
            data[name] = [extra_pnginfo]
        elif kind == "UNIQUE_ID":
            data[name] = [node_id]
    func = getattr(obj, cls.FUNCTION)
    if getattr(cls, "INPUT_IS_LIST", False):
        returned = [func(**data)]
    elif not data:
        returned = [func()]
    else:
        n = max(len(v) for v in data.values())
        if any(len(v) == 0 for v in data.values()):
            n = 0
        returned = [func(**{k: v[i if len(v) > i else -1] for k, v in data.items()}) for i in range(n)]

    n_out = len(return_types(cls))
    results, uis = [], []
    for r in returned:
        if isinstance(r, dict):
            if "ui" in r:
                uis.append(r["ui"])
            if "result" in r:
                results.append(tuple(r["result"]))
            elif n_out:
                raise TypeError(f"returned a dict without 'result' but RETURN_TYPES has {n_out} output(s)")
        elif isinstance(r, (tuple, list)):
            results.append(tuple(r))
        else:
            raise TypeError(f"{cls.FUNCTION}() returned {type(r).__name__}; ComfyUI requires a tuple (one value per "
                            "RETURN_TYPES entry) or a dict {'ui': ..., 'result': (...)}")
    for r in results:
        if len(r) != n_out:
            raise TypeError(f"{cls.FUNCTION}() returned {len(r)} value(s) but RETURN_TYPES has {n_out}")
    out_is_list = list(getattr(cls, "OUTPUT_IS_LIST", None) or [False] * n_out)
    outputs: list[list] = []
    for i in range(n_out):
        if i < len(out_is_list) and out_is_list[i]:
            outputs.append([x for r in results for x in r[i]])
        else:
            outputs.append([r[i] for r in results])
    ui = {k: [y for u in uis for y in u[k]] for k in uis[0]} if uis else {}
    return outputs, ui


def _files_from_ui(ui: dict, dirs: dict[str, Path]) -> list[Path]:
    files = []
    for items in ui.values():
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and "filename" in item and item.get("type") in dirs:
                files.append(dirs[item["type"]] / (item.get("subfolder") or "") / item["filename"])
    return files


def _cache_key(cls, class_type: str, inputs: dict) -> Optional[tuple]:
    """What makes a node's outputs reusable across runs: no linked input, not an output node, and the same widget
    values and ``IS_CHANGED`` (a NaN, "always changed", is never reused). None: run it."""
    import inspect
    import json
    import math

    if getattr(cls, "OUTPUT_NODE", False) or any(is_link(v) for v in inputs.values()):
        return None
    changed = ""
    if callable(getattr(cls, "IS_CHANGED", None)):
        params = inspect.signature(cls.IS_CHANGED).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        changed = cls.IS_CHANGED(**{k: v for k, v in inputs.items() if takes_all or k in params})
        if isinstance(changed, float) and math.isnan(changed):
            return None
    try:
        return class_type, json.dumps(inputs, sort_keys=True), str(changed)
    except TypeError:
        return None


def run_workflow(workflow: Union[dict, str, Path], node_classes: dict, out_dir: Union[str, Path],
                 input_dir: Union[str, Path, None] = None, overrides: Any = None,
                 progress: Union[bool, Callable[[str], None]] = True, *, temp_dir: Union[str, Path, None] = None,
                 extra_pnginfo: Optional[dict] = None, inference_mode: bool = True,
                 cache: Optional[dict] = None) -> RunResult:
    """Run a UI- or API-format workflow (dict, or path to a .json / ComfyUI .png) with ``node_classes``.

    Every problem is found before anything runs and raised as one WorkflowError. A node that fails raises
    ExecutionError (``.result`` holds what ran and the files already written, which are kept). ``progress``: True
    prints one line per node and tqdm bars on stderr, False is silent, a callable receives the lines.
    ``overrides``: ``{"5.seed": 42}`` or ``["5.seed=42"]``. ``input_dir`` defaults to ``<out_dir>/../input``,
    ``temp_dir`` (PreviewImage) to ``<out_dir>/../temp``. Like ComfyUI, nodes run under ``torch.inference_mode()``.
    ``cache``: a dict kept by the caller across runs; a node with no links and no output role whose inputs (and
    ``IS_CHANGED``) are unchanged reuses its earlier outputs, as ComfyUI's own cache does between prompts (a loader
    does not load the same model twice).
    """
    out = Path(out_dir).resolve()
    inp = Path(input_dir).resolve() if input_dir is not None else out.parent / "input"
    tmp = Path(temp_dir).resolve() if temp_dir is not None else out.parent / "temp"
    say: Callable[[str], None]
    if callable(progress):
        say = progress
    elif progress:
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    else:
        say = lambda line: None  # noqa: E731

    with directories(str(out), str(inp), str(tmp)):  # LoadImage lists the input folder while validating
        prompt, extra_pnginfo, warnings = prepare(workflow, node_classes, overrides, extra_pnginfo)
        order, skipped = execution_order(prompt, node_classes)
        result = RunResult(prompt=prompt, skipped=skipped, warnings=warnings)
        for w in warnings:
            say(f"warning: {w}")
        for nid in skipped:
            say(f"note: node {nid} ({prompt[nid]['class_type']}) feeds no output node; skipped (as in ComfyUI)")
        ensure_folder(out, "output folder")
        dirs = {"output": out, "temp": tmp, "input": inp}
        raw: dict[str, list[list]] = {}
        state = {"prefix": ""}

        def factory(label: str) -> Progress:
            if progress is True:
                return tqdm_progress(f"{state['prefix']} {label}".strip())
            return Progress(label=label)

        old_env_output = os.environ.get(ENV_OUTPUT)
        os.environ[ENV_OUTPUT] = str(out)  # FaceSmith nodes that save files (core/paths.output_dir) write to --out
        grad_ctx = contextlib.nullcontext()
        if inference_mode:
            try:
                import torch

                grad_ctx = torch.inference_mode()
            except ImportError:  # pragma: no cover
                pass
        try:
            with grad_ctx, headless_progress(factory):  # node_progress() inside nodes reads it
                for k, nid in enumerate(order, 1):
                    node = prompt[nid]
                    ct = node["class_type"]
                    cls = node_classes[ct]
                    head = f"[{k}/{len(order)}] node {nid} {ct}"
                    state["prefix"] = f"[{k}/{len(order)}]"
                    t0 = time.perf_counter()
                    key = _cache_key(cls, ct, node.get("inputs", {})) if cache is not None else None
                    try:
                        if key is not None and key in cache:
                            outputs, ui = cache[key]
                        else:
                            outputs, ui = _call_node(cls, cls(), node.get("inputs", {}), raw, prompt, extra_pnginfo,
                                                     nid)
                            if key is not None:
                                cache[key] = (outputs, ui)
                    except (KeyboardInterrupt, Interrupted) as e:
                        result.timings[nid] = time.perf_counter() - t0
                        say(f"{head} ... interrupted after {result.timings[nid]:.1f}s")
                        raise ExecutionError(nid, ct, str(e) or "interrupted by the user", result,
                                             interrupted=True) from e
                    except Exception as e:
                        result.timings[nid] = time.perf_counter() - t0
                        say(f"{head} ... FAILED after {result.timings[nid]:.1f}s: {type(e).__name__}: {e}")
                        raise ExecutionError(nid, ct, f"{type(e).__name__}: {e}", result) from e
                    dt = time.perf_counter() - t0
                    raw[nid] = outputs
                    result.order.append(nid)
                    result.timings[nid] = dt
                    is_list = list(getattr(cls, "OUTPUT_IS_LIST", None) or [])
                    result.outputs[nid] = tuple(
                        v[0] if len(v) == 1 and not (i < len(is_list) and is_list[i]) else v
                        for i, v in enumerate(outputs))
                    if ui:
                        result.ui[nid] = ui
                        result.files += _files_from_ui(ui, dirs)
                    say(f"{head} ... done in {dt:.1f}s")
        finally:
            if old_env_output is None:
                os.environ.pop(ENV_OUTPUT, None)
            else:
                os.environ[ENV_OUTPUT] = old_env_output
    return result
