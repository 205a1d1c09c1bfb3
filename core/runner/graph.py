"""Workflow files: loading (JSON or a PNG saved by ComfyUI), format detection, and UI-format -> API-format conversion
(what ComfyUI's graph editor does in ``graphToPrompt`` before it POSTs to /prompt)."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NodeError, WorkflowError
from .spec import InputSpec, input_specs, node_sort_key

CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize", "increment-wrap")
NOTE_TYPES = ("Note", "MarkdownNote")
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


# ----------------------------------------------------------------------------------------------------------- loading
def load_workflow_file(path: str | Path) -> dict:
    """Read a workflow JSON file (UI or API format), or the workflow/prompt embedded in a ComfyUI PNG."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(NodeError(None, None, None, f"no such workflow file: {path}", "json"))
    if path.suffix.lower() == ".png":
        return _load_png(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise WorkflowError(NodeError(None, None, None, f"cannot read {path}: {e}", "json")) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(
            NodeError(None, None, None, f"{path}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}", "json")
        ) from None
    except RecursionError:
        raise WorkflowError(NodeError(None, None, None, f"{path}: JSON nested too deeply (a workflow nests at most "
                                                        f"{MAX_DEPTH} levels)", "json")) from None
    check_depth(data, str(path))
    if not isinstance(data, dict):
        raise WorkflowError(NodeError(None, None, None, f"{path}: expected a JSON object, got {type(data).__name__}",
                                      "format"))
    return data


MAX_DEPTH = 64  # real workflows nest < 10 levels; deeper data would only exhaust the recursion of later steps


def check_depth(data: Any, source: str | None = None, limit: int = MAX_DEPTH) -> None:
    """Raise WorkflowError if ``data`` (parsed JSON) nests deeper than ``limit`` (checked without recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            where = f"{source}: " if source else ""
            raise WorkflowError(NodeError(None, None, None, f"{where}JSON nested more than {limit} levels deep; "
                                                            "not a workflow", "json"))
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _load_png(path: Path) -> dict:
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", None) or img.info)
    except OSError as e:
        raise WorkflowError(NodeError(None, None, None, f"cannot read {path}: {e}", "json")) from None
    for key in ("workflow", "prompt"):
        if isinstance(text.get(key), str):
            try:
                data = json.loads(text[key])
                check_depth(data, f"{path} ('{key}' chunk)")
            except RecursionError:
                raise WorkflowError(NodeError(None, None, None, f"{path}: the PNG's '{key}' chunk is nested too "
                                              "deeply", "json")) from None
            except json.JSONDecodeError as e:
                raise WorkflowError(NodeError(None, None, None, f"{path}: the PNG's '{key}' chunk is not valid "
                                              f"JSON (line {e.lineno}, column {e.colno}: {e.msg})", "json")) from None
            if isinstance(data, dict):
                return data
    raise WorkflowError(NodeError(None, None, None, f"{path}: this PNG has no embedded ComfyUI workflow", "format"))


def detect_format(data: Any) -> str:
    """"ui" (graph editor save), "api" (``{id: {class_type, inputs}}``) or "api_wrapped" (a /prompt request body
    ``{"prompt": {...}, "extra_data": {...}}``). Raises WorkflowError for anything else."""
    if not isinstance(data, dict) or not data:
        raise WorkflowError(NodeError(None, None, None, "empty workflow or not a JSON object", "format"))
    if isinstance(data.get("nodes"), list):
        return "ui"
    if isinstance(data.get("prompt"), dict) and all(isinstance(v, dict) for v in data["prompt"].values()):
        if all("class_type" in v for v in data["prompt"].values()):
            return "api_wrapped"
    if all(isinstance(v, dict) for v in data.values()) and any("class_type" in v for v in data.values()):
        return "api"  # a node without class_type is reported by validation, with its id
    raise WorkflowError(NodeError(
        None, None, None,
        "not a ComfyUI workflow: expected the graph editor format ({\"nodes\": [...], \"links\": [...]}) or the "
        "API format ({\"<id>\": {\"class_type\": ..., \"inputs\": {...}}})", "format"))


# -------------------------------------------------------------------------------------------------------- conversion
@dataclass
class Conversion:
    prompt: dict
    errors: list[NodeError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # frontend-only nodes that vanished in conversion: id -> (type, ["<target id>.<input>", ...])
    virtual: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


def _links_table(ui: dict) -> dict[int, tuple]:
    """link id -> (origin_id, origin_slot, target_id, target_slot, type); both the list and the object form."""
    table = {}
    for link in ui.get("links") or []:
        if isinstance(link, (list, tuple)) and len(link) >= 5:
            table[link[0]] = tuple(link[1:6]) + ((None,) if len(link) < 6 else ())
        elif isinstance(link, dict) and "id" in link:
            table[link["id"]] = (link.get("origin_id"), link.get("origin_slot"), link.get("target_id"),
                                 link.get("target_slot"), link.get("type"))
    return table


def _widget_slots(specs: dict[str, InputSpec]) -> list[tuple[str, str]]:
    """The widgets ComfyUI's editor creates, in order: (kind, input name); kinds: value, control, filter, upload."""
    slots = []
    for spec in specs.values():
        if not spec.is_widget:
            continue
        slots.append(("value", spec.name))
        if spec.has_control_widget:
            slots.append(("control", spec.name))
            if spec.type == "COMBO":
                slots.append(("filter", spec.name))
        if spec.has_upload_widget:
            slots.append(("upload", spec.name))
    return slots


def map_widget_values(specs: dict[str, InputSpec], values: Any) -> tuple[dict, list[str]]:
    """widgets_values -> {input name: value}. The extra values ComfyUI stores after some widgets
    (control_after_generate after seeds, the combo filter, the upload button) are recognised and skipped, whether
    present or not, so files from old and new editors both map. Returns (values, problems)."""
    problems: list[str] = []
    if isinstance(values, dict):  # some editors/extensions save widgets by name
        return {k: v for k, v in values.items() if k in specs and specs[k].is_widget}, problems
    values = list(values or [])
    slots = _widget_slots(specs)
    n_value_slots = sum(1 for k, _ in slots if k == "value")
    spare = len(values) - n_value_slots  # how many optional extras the list can hold
    out: dict = {}
    i = 0
    for kind, name in slots:
        if kind == "value":
            if i < len(values):
                out[name] = values[i]
                i += 1
            else:
                spec = specs[name]
                if "default" in spec.options:
                    out[name] = spec.options["default"]
                elif spec.type == "COMBO" and spec.choices:
                    out[name] = spec.choices[0]
                problems.append(f"no saved value for widget '{name}'" +
                                (f", using the default {out[name]!r}" if name in out else ""))
            continue
        if i >= len(values) or spare <= 0:
            continue
        v = values[i]
        if (kind == "control" and v in CONTROL_VALUES) or (kind == "filter" and isinstance(v, str)) or (
                kind == "upload" and isinstance(v, str)):
            i += 1
            spare -= 1
    if i < len(values):
        problems.append(f"{len(values) - i} extra widget value(s) {values[i:]!r} ignored (the node may have "
                        "changed since the workflow was saved)")
    return out, problems


def convert(ui: dict, node_classes: dict) -> Conversion:
    """UI format -> API format, collecting problems instead of raising. Unknown node types are passed through with
    their links only (validation reports them)."""
    conv = Conversion(prompt={})
    nodes = [n for n in ui.get("nodes") or [] if isinstance(n, dict) and "id" in n]
    by_id = {n["id"]: n for n in nodes}
    links = _links_table(ui)
    subgraph_ids = {sg.get("id") for sg in ((ui.get("definitions") or {}).get("subgraphs") or [])
                    if isinstance(sg, dict)}

    def err(node, input_name, msg, kind="conversion"):
        conv.errors.append(NodeError(str(node.get("id")), node.get("type"), input_name, msg, kind))

    def resolve(link_id, seen=()):
        """-> ("link", [src, slot]) | ("value", v) | ("none", reason) | ("error", reason)"""
        if link_id in seen:
            return "error", "the link loops through reroute/bypassed nodes"
        seen = seen + (link_id,)
        link = links.get(link_id)
        if link is None:
            return "error", f"link {link_id} is not in the workflow's links list"
        origin_id, origin_slot = link[0], link[1]
        origin = by_id.get(origin_id)
        if origin is None:
            return "error", f"link {link_id} comes from node {origin_id}, which is not in the workflow"
        otype, mode = origin.get("type"), origin.get("mode", MODE_ALWAYS)
        if otype == "Reroute":
            ins = origin.get("inputs") or []
            if not ins or ins[0].get("link") is None:
                return "none", f"reroute node {origin_id} has nothing connected to it"
            return resolve(ins[0]["link"], seen)
        if otype == "PrimitiveNode":
            wv = origin.get("widgets_values")
            if isinstance(wv, list) and wv:
                return "value", wv[0]
            return "none", f"primitive node {origin_id} has no value"
        if mode == MODE_NEVER:
            return "none", f"it is connected to node {origin_id} ({otype}), which is muted"
        if mode == MODE_BYPASS:
            outs = origin.get("outputs") or []
            want = outs[origin_slot].get("type") if isinstance(origin_slot, int) and origin_slot < len(outs) else None
            ins = origin.get("inputs") or []
            order = ([origin_slot] if isinstance(origin_slot, int) and origin_slot < len(ins) else []) + list(
                range(len(ins)))
            for j in order:
                if ins[j].get("type") == want and ins[j].get("link") is not None:
                    return resolve(ins[j]["link"], seen)
            return "none", f"it is connected to node {origin_id} ({otype}), which is bypassed and has no {want} " \
                           "input to pass through"
        if isinstance(otype, str) and otype in subgraph_ids:
            return "error", f"it is connected to subgraph node {origin_id}"
        return "link", [str(origin_id), int(origin_slot if origin_slot is not None else 0)]

    for node in sorted(nodes, key=lambda n: node_sort_key(str(n["id"]))):
        nid, ntype, mode = str(node["id"]), node.get("type"), node.get("mode", MODE_ALWAYS)
        if ntype in NOTE_TYPES or ntype == "Reroute":
            continue
        if ntype == "PrimitiveNode":
            targets = []
            for out in node.get("outputs") or []:
                for lid in out.get("links") or []:
                    link = links.get(lid)
                    if link and link[2] in by_id:
                        tgt = by_id[link[2]]
                        tin = (tgt.get("inputs") or [])
                        ts = link[3]
                        if isinstance(ts, int) and ts < len(tin):
                            targets.append(f"{link[2]}.{(tin[ts].get('widget') or {}).get('name') or tin[ts].get('name')}")
            conv.virtual[nid] = (ntype, targets)
            continue
        if mode in (MODE_NEVER, MODE_BYPASS):
            conv.virtual[nid] = (f"{ntype} ({'muted' if mode == MODE_NEVER else 'bypassed'})", [])
            continue
        if not isinstance(ntype, str):
            err(node, None, "node has no type", "format")
            continue
        if ntype in subgraph_ids:
            err(node, None, "subgraphs are not supported by the facesmith runner; convert the subgraph back to "
                            "regular nodes in ComfyUI, or run this workflow in ComfyUI", "unknown_node")
            continue
        if ntype.startswith("workflow>") or ntype.startswith("workflow/"):
            err(node, None, "group nodes are not supported by the facesmith runner; convert the group node back "
                            "to regular nodes in ComfyUI, or run this workflow in ComfyUI", "unknown_node")
            continue
        inputs: dict = {}
        cls = node_classes.get(ntype)
        if cls is not None:
            try:
                specs = input_specs(cls)
            except Exception as e:  # reported again by validation
                specs = None
                err(node, None, f"INPUT_TYPES() failed: {type(e).__name__}: {e}", "invalid")
            if specs is not None:
                values, problems = map_widget_values(specs, node.get("widgets_values"))
                inputs.update(values)
                conv.warnings += [f"node {nid} ({ntype}): {p}" for p in problems]
        for inp in node.get("inputs") or []:
            if not isinstance(inp, dict):
                continue
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            if inp.get("link") is None or name is None:
                continue
            what, val = resolve(inp["link"])
            if what == "link":
                inputs[name] = val
            elif what == "value":
                inputs[name] = val
            elif what == "none":
                # a widget input keeps its widget value (as in ComfyUI); a socket input stays missing
                conv.warnings.append(f"node {nid} ({ntype}) input '{name}': not connected, {val}")
            else:
                err(node, name, val, "bad_link")
        conv.prompt[nid] = {"inputs": inputs, "class_type": ntype,
                            "_meta": {"title": node.get("title") or ntype}}
    return conv


def to_api(ui_workflow: dict, node_classes: dict) -> dict:
    """Convert a graph-editor (UI format) workflow to the API format ComfyUI's /prompt takes. Raises WorkflowError
    listing every conversion problem and every node type that is not in ``node_classes``."""
    from .validate import unknown_node_error

    if detect_format(ui_workflow) != "ui":
        raise WorkflowError(NodeError(None, None, None, "this workflow is already in API format", "format"))
    conv = convert(ui_workflow, node_classes)
    errors = list(conv.errors)
    for nid, node in conv.prompt.items():
        if node["class_type"] not in node_classes:
            errors.append(unknown_node_error(nid, node["class_type"], node_classes))
    if errors:
        raise WorkflowError(errors)
    return copy.deepcopy(conv.prompt)
