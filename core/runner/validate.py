"""Checking an API-format prompt before anything runs, the way ComfyUI's ``validate_prompt`` does (plus cycles), and
``--set`` overrides. Every problem is collected; one ``WorkflowError`` lists them all."""
from __future__ import annotations

import copy
import difflib
import math
from typing import Any, Optional

from .errors import NodeError, WorkflowError
from .spec import (InputSpec, format_choices, hidden_inputs, input_specs, is_link, is_output_node,
                   looks_like_bad_link, node_sort_key, return_names, return_types, types_match,
                   validate_inputs_args)

RUN_IN_COMFYUI = "run this workflow in ComfyUI"

# Well-known ComfyUI core nodes (not exhaustive; anything else unknown is assumed to come from a custom node pack).
COMFY_CORE_NODES = frozenset("""
KSampler KSamplerAdvanced SamplerCustom SamplerCustomAdvanced KSamplerSelect BasicScheduler KarrasScheduler
BasicGuider CFGGuider DualCFGGuider RandomNoise DisableNoise CheckpointLoaderSimple CheckpointLoader
ImageOnlyCheckpointLoader unCLIPCheckpointLoader DiffusersLoader UNETLoader CLIPLoader DualCLIPLoader TripleCLIPLoader
VAELoader LoraLoader LoraLoaderModelOnly CLIPTextEncode CLIPTextEncodeSDXL CLIPTextEncodeSDXLRefiner CLIPTextEncodeFlux
CLIPSetLastLayer ConditioningCombine ConditioningAverage ConditioningConcat ConditioningSetArea
ConditioningSetAreaPercentage ConditioningSetMask ConditioningSetTimestepRange ConditioningZeroOut FluxGuidance
VAEDecode VAEEncode VAEDecodeTiled VAEEncodeTiled VAEEncodeForInpaint InpaintModelConditioning SetLatentNoiseMask
EmptyLatentImage EmptySD3LatentImage LatentUpscale LatentUpscaleBy LatentComposite LatentBlend LatentFromBatch
RepeatLatentBatch SaveLatent LoadLatent ControlNetLoader DiffControlNetLoader ControlNetApply ControlNetApplyAdvanced
ControlNetApplySD3 CLIPVisionLoader CLIPVisionEncode StyleModelLoader StyleModelApply unCLIPConditioning GLIGENLoader
GLIGENTextBoxApply UpscaleModelLoader ImageUpscaleWithModel ImageScale ImageScaleBy ImageScaleToTotalPixels
ImageInvert ImageBatch ImagePadForOutpaint ImageCrop ImageBlend ImageBlur ImageSharpen ImageQuantize
ImageCompositeMasked ImageToMask MaskToImage LoadImageMask LoadImageOutput SolidMask InvertMask CropMask MaskComposite
FeatherMask GrowMask ThresholdMask SaveAnimatedWEBP SaveAnimatedPNG ModelSamplingDiscrete ModelSamplingSD3
ModelSamplingFlux ModelMergeSimple CLIPMergeSimple CheckpointSave FreeU FreeU_V2 HypernetworkLoader
PrimitiveInt PrimitiveFloat PrimitiveString PrimitiveStringMultiline PrimitiveBoolean StringConcatenate
""".split())

# Node name prefixes (or exact names) of well-known custom node packs.
KNOWN_PACKS = (
    ("IPAdapter", "ComfyUI_IPAdapter_plus"),
    ("PrepImageForClipVision", "ComfyUI_IPAdapter_plus"),
    ("InstantID", "ComfyUI_InstantID"),
    ("ApplyInstantID", "ComfyUI_InstantID"),
    ("PulidModelLoader", "PuLID_ComfyUI"),
    ("ApplyPulid", "PuLID_ComfyUI"),
    ("PulidEvaClipLoader", "PuLID_ComfyUI"),
    ("PulidInsightFaceLoader", "PuLID_ComfyUI"),
    ("FaceDetailer", "ComfyUI-Impact-Pack"),
    ("UltralyticsDetectorProvider", "ComfyUI-Impact-Subpack"),
    ("SAMLoader", "ComfyUI-Impact-Pack"),
    ("ReActor", "comfyui-reactor-node"),
    ("VHS_", "ComfyUI-VideoHelperSuite"),
    ("ACN_", "ComfyUI-Advanced-ControlNet"),
    ("ADE_", "ComfyUI-AnimateDiff-Evolved"),
    ("UltimateSDUpscale", "ComfyUI_UltimateSDUpscale"),
    ("SetNode", "ComfyUI-KJNodes"),
    ("GetNode", "ComfyUI-KJNodes"),
    ("Anything Everywhere", "cg-use-everywhere"),
    ("easy ", "ComfyUI-Easy-Use"),
    ("CR ", "ComfyUI_Comfyroll_CustomNodes"),
    ("Efficient Loader", "efficiency-nodes-comfyui"),
    ("KSampler (Efficient)", "efficiency-nodes-comfyui"),
    ("Florence2", "ComfyUI-Florence2"),
)

FACESMITH_PREFIXES = ("FaceSmith", "SynthFace")


def unknown_node_error(node_id: str, class_type: str, node_classes: dict) -> NodeError:
    ours = "the facesmith runner only runs FaceSmith nodes and LoadImage/SaveImage/PreviewImage"
    if class_type in COMFY_CORE_NODES:
        msg = f"'{class_type}' is a ComfyUI core node; {ours}: {RUN_IN_COMFYUI}"
    else:
        pack = next((p for prefix, p in KNOWN_PACKS if class_type.startswith(prefix)), None)
        if pack:
            msg = f"'{class_type}' comes from the custom node pack {pack}; {ours}: {RUN_IN_COMFYUI} with " \
                  f"{pack} installed"
        elif class_type.startswith(FACESMITH_PREFIXES):
            msg = f"'{class_type}' looks like a FaceSmith node but this FaceSmith has no such node (is FaceSmith up " \
                  "to date, and did its nodes import without errors?)"
        else:
            msg = f"unknown node type '{class_type}': not a FaceSmith node nor a known ComfyUI core node, probably " \
                  f"from a custom node pack; {RUN_IN_COMFYUI} with that pack installed"
    close = difflib.get_close_matches(class_type, list(node_classes), n=1, cutoff=0.8)
    if close:
        msg += f" (did you mean '{close[0]}'?)"
    return NodeError(node_id, class_type, None, msg, "unknown_node")


# ------------------------------------------------------------------------------------------------------ value checks
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def coerce_value(value: Any, spec: InputSpec) -> tuple[Any, Optional[str], str]:
    """Convert a constant to the input's type and check range/choices. Returns (value, error or None, error kind)."""
    t = spec.type
    if t == "INT":
        v = _to_int(value)
        if v is None:
            return value, f"expected an integer, got {value!r}", "bad_value"
        return _range(v, spec)
    if t == "FLOAT":
        v = _to_float(value)
        if v is None:
            return value, f"expected a number, got {value!r}", "bad_value"
        if not math.isfinite(v):  # NaN passes every min/max comparison
            return value, f"expected a finite number, got {value!r}", "bad_value"
        return _range(v, spec)
    if t == "BOOLEAN":
        if isinstance(value, bool):
            return value, None, ""
        if isinstance(value, int) and value in (0, 1):
            return bool(value), None, ""
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE, None, ""
        return value, f"expected true or false, got {value!r}", "bad_value"
    if t == "STRING":
        if isinstance(value, str):
            return value, None, ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), None, ""
        return value, f"expected a string, got {type(value).__name__} {value!r}", "bad_value"
    if t == "COMBO":
        choices = spec.choices or []
        if any(value == c and type(value) is type(c) for c in choices):
            return value, None, ""
        for c in choices:  # "--set 5.size=512" arrives as a string; combos may hold numbers
            if str(c) == str(value):
                return c, None, ""
        return value, f"value {value!r} is not one of the allowed values {format_choices(choices)}", "not_in_list"
    if t == "*":
        return value, None, ""
    return value, (f"expects a link from a node output of type {t}, but got the constant value "
                   f"{_short(value)}"), "bad_value"


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _to_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s)
        except ValueError:
            f = _to_float(s)
            return int(f) if f is not None and math.isfinite(f) and f.is_integer() else None
    return None


def _to_float(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _range(v, spec: InputSpec):
    lo, hi = spec.options.get("min"), spec.options.get("max")
    allowed = f"allowed {lo if lo is not None else '-inf'} .. {hi if hi is not None else 'inf'}"
    if lo is not None and v < lo:
        return v, f"value {v} is smaller than the minimum {lo} ({allowed})", "out_of_range"
    if hi is not None and v > hi:
        return v, f"value {v} is bigger than the maximum {hi} ({allowed})", "out_of_range"
    return v, None, ""


# --------------------------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, str, str]:
    """"5.seed=42" -> ("5", "seed", "42"). Raises ValueError."""
    key, eq, value = text.partition("=")
    node_id, dot, name = key.strip().partition(".")
    if not eq or not dot or not node_id or not name:
        raise ValueError(f"--set {text!r}: expected NODE_ID.INPUT=VALUE, e.g. 5.seed=42")
    return node_id, name, value


def apply_overrides(prompt: dict, overrides: Any, node_classes: dict,
                    virtual: Optional[dict] = None) -> tuple[dict, list[NodeError]]:
    """Apply ``{"5.seed": 42}`` / ``[("5", "seed", 42)]`` / ``["5.seed=42"]`` to a copy of ``prompt``. String values
    are converted to the input's type (validation checks range/choices afterwards)."""
    prompt = copy.deepcopy(prompt)
    errors: list[NodeError] = []
    items: list[tuple[str, str, Any]] = []
    if isinstance(overrides, dict):
        overrides = list(overrides.items())
    for item in overrides or []:
        try:
            if isinstance(item, str):
                items.append(parse_override(item))
            elif len(item) == 3:
                items.append((str(item[0]), str(item[1]), item[2]))
            elif len(item) == 2 and isinstance(item[0], tuple):
                items.append((str(item[0][0]), str(item[0][1]), item[1]))
            elif len(item) == 2:
                nid, _, name = str(item[0]).partition(".")
                if not name:
                    raise ValueError(f"override key {item[0]!r}: expected 'NODE_ID.INPUT'")
                items.append((nid, name, item[1]))
            else:
                raise ValueError(f"override {item!r}: expected NODE_ID.INPUT=VALUE")
        except (ValueError, TypeError) as e:
            errors.append(NodeError(None, None, None, str(e), "override"))
    for nid, name, value in items:
        node = prompt.get(nid)
        if node is None:
            msg = f"--set {nid}.{name}: there is no node {nid} in this workflow"
            if virtual and nid in virtual:
                vtype, targets = virtual[nid]
                msg = f"--set {nid}.{name}: node {nid} is a {vtype} node that does not run"
                if targets:
                    msg += f"; set the input(s) it feeds instead: {', '.join(targets)}"
            else:
                msg += f" (nodes: {', '.join(sorted(prompt, key=node_sort_key))})"
            errors.append(NodeError(nid, None, name, msg, "override"))
            continue
        ct = node.get("class_type")
        cls = node_classes.get(ct)
        if cls is None:
            continue  # reported as an unknown node type
        try:
            specs = input_specs(cls)
        except Exception:
            continue  # reported by validation
        spec = specs.get(name)
        if spec is None:
            errors.append(NodeError(nid, ct, name, f"--set: {ct} has no input '{name}' (inputs: "
                                                   f"{', '.join(specs) or 'none'})", "override"))
            continue
        if spec.link_only:
            errors.append(NodeError(nid, ct, name, f"--set: '{name}' takes a link from a {spec.type} output and "
                                                   "cannot be set to a value", "override"))
            continue
        if isinstance(value, str) and spec.type in ("INT", "FLOAT", "BOOLEAN", "COMBO"):
            converted, problem, _ = coerce_value(value, spec)
            if problem is None or spec.type == "COMBO":
                value = converted
        node.setdefault("inputs", {})[name] = value
    return prompt, errors


# -------------------------------------------------------------------------------------------------------- validation
def check(prompt: Any, node_classes: dict) -> tuple[dict, list[NodeError], list[str]]:
    """Validate an API-format prompt. Returns (prompt with constants converted to their types, errors, warnings)."""
    errors: list[NodeError] = []
    warnings: list[str] = []
    if not isinstance(prompt, dict) or not prompt:
        return {}, [NodeError(None, None, None, "the workflow has no nodes", "format")], warnings
    prompt = copy.deepcopy(prompt)
    edges: dict[str, list[tuple[str, str]]] = {}  # node -> [(source node, input name)]
    outputs_found = False

    for nid in sorted(prompt, key=node_sort_key):
        node = prompt[nid]
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            errors.append(NodeError(nid, None, None, "node has no 'class_type'", "format"))
            continue
        ct = node["class_type"]
        inputs = node.setdefault("inputs", {})
        if not isinstance(inputs, dict):
            errors.append(NodeError(nid, ct, None, "'inputs' must be an object", "format"))
            continue
        cls = node_classes.get(ct)
        if cls is None:
            errors.append(unknown_node_error(nid, ct, node_classes))
            continue
        node_errors: list[NodeError] = []
        try:
            specs = input_specs(cls)
            hidden_inputs(cls)
            if not isinstance(getattr(cls, "FUNCTION", None), str) or not hasattr(cls, getattr(cls, "FUNCTION")):
                raise ValueError(f"FUNCTION {getattr(cls, 'FUNCTION', None)!r} is not a method of the class")
            return_types(cls)
        except Exception as e:
            errors.append(NodeError(nid, ct, None, f"the node class is broken: {type(e).__name__}: {e}", "invalid"))
            continue
        if is_output_node(cls):
            outputs_found = True
        vargs = validate_inputs_args(cls)
        v_names, v_kwargs = vargs if vargs else (set(), False)
        received_types: dict[str, str] = {}
        for name, spec in specs.items():
            if name not in inputs:
                if spec.required:
                    hint = f"connect a node that outputs {spec.type}" if spec.link_only else \
                        f"set it to {spec.describe()}"
                    node_errors.append(NodeError(nid, ct, name, f"required input '{name}' is missing ({hint})",
                                                 "missing_input"))
                continue
            value = inputs[name]
            if is_link(value):
                src_id, slot = value
                edges.setdefault(nid, []).append((src_id, name))
                src = prompt.get(src_id)
                if not isinstance(src, dict):
                    node_errors.append(NodeError(nid, ct, name, f"linked to node {src_id}, which does not exist",
                                                 "bad_link"))
                    continue
                src_cls = node_classes.get(src.get("class_type"))
                if src_cls is None:
                    continue  # the source's own error says why
                try:
                    rts, rns = return_types(src_cls), return_names(src_cls)
                except Exception:
                    continue
                if not 0 <= slot < len(rts):
                    outs = ", ".join(f"{i}: {n} ({t})" for i, (n, t) in enumerate(zip(rns, rts))) or "none"
                    node_errors.append(NodeError(
                        nid, ct, name, f"linked to output {slot} of node {src_id} ({src['class_type']}), which has "
                                       f"no output {slot} (outputs: {outs})", "bad_link"))
                    continue
                received_types[name] = rts[slot]
                if not types_match(rts[slot], spec.type):
                    node_errors.append(NodeError(
                        nid, ct, name, f"type mismatch: output {slot} '{rns[slot]}' of node {src_id} "
                                       f"({src['class_type']}) is {rts[slot]}, but input '{name}' expects "
                                       f"{spec.type}", "type_mismatch"))
                continue
            if looks_like_bad_link(value):
                node_errors.append(NodeError(nid, ct, name, f"{list(value)!r} looks like a link but the node id must "
                                                            f"be a string: [\"{value[0]}\", {value[1]}]", "bad_link"))
                continue
            if name in v_names or v_kwargs:
                continue  # ComfyUI leaves inputs that VALIDATE_INPUTS takes to VALIDATE_INPUTS
            converted, problem, kind = coerce_value(value, spec)
            if problem:
                node_errors.append(NodeError(nid, ct, name, problem, kind))
            else:
                inputs[name] = converted
        for name in list(inputs):
            if name not in specs and not is_link(inputs[name]):
                warnings.append(f"node {nid} ({ct}): input '{name}' is not an input of {ct}; ignored")
                del inputs[name]
            elif name not in specs:
                warnings.append(f"node {nid} ({ct}): linked input '{name}' is not an input of {ct}; ignored")
                del inputs[name]
        if vargs and not node_errors:
            node_errors += _custom_validation(nid, ct, cls, specs, inputs, v_names, v_kwargs, received_types)
        errors += node_errors

    errors += _cycle_errors(prompt, edges)
    if not outputs_found and not any(e.kind == "unknown_node" for e in errors):
        errors.append(NodeError(None, None, None, "the workflow has no output node (SaveImage, PreviewImage or "
                                                  "another node with OUTPUT_NODE = True), so nothing would run; "
                                                  "ComfyUI refuses it too ('Prompt has no outputs')", "no_output"))
    return prompt, errors, warnings


def _custom_validation(nid, ct, cls, specs, inputs, v_names, v_kwargs, received_types) -> list[NodeError]:
    kwargs = {k: v for k, v in inputs.items() if not is_link(v) and (k in v_names or v_kwargs)}
    if "input_types" in v_names:
        kwargs["input_types"] = received_types
    try:
        ret = cls.VALIDATE_INPUTS(**kwargs)
    except Exception as e:
        return [NodeError(nid, ct, None, f"VALIDATE_INPUTS raised {type(e).__name__}: {e}", "custom_validation")]
    if ret is True:
        return []
    checked = [k for k in kwargs if k != "input_types"]
    name = checked[0] if len(checked) == 1 else (", ".join(checked) or None)
    return [NodeError(nid, ct, name, str(ret) if ret is not False else "custom validation failed",
                      "custom_validation")]


def _cycle_errors(prompt: dict, edges: dict[str, list[tuple[str, str]]]) -> list[NodeError]:
    """One error per cycle found, naming the nodes in it."""
    errors = []
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in prompt}
    reported: set[frozenset] = set()

    def ct(n):
        node = prompt.get(n)
        return node.get("class_type") if isinstance(node, dict) else None

    for start in sorted(prompt, key=node_sort_key):
        if color[start] != WHITE:
            continue
        stack = [(start, iter(edges.get(start, [])))]
        path = [start]
        color[start] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = BLACK
                stack.pop()
                path.pop()
                continue
            src, input_name = nxt
            if src not in color:
                continue
            if color[src] == GREY:
                cyc = path[path.index(src):]
                key = frozenset(cyc)
                if key not in reported:
                    reported.add(key)
                    # path goes consumer -> source; show it in data-flow order
                    flow = list(reversed(cyc)) + [cyc[-1]]
                    names = " -> ".join(f"{n} ({ct(n)})" for n in flow)
                    errors.append(NodeError(node, ct(node), input_name, f"cycle: {names}; a workflow must not "
                                                                        "loop back on itself", "cycle"))
            elif color[src] == WHITE:
                color[src] = GREY
                path.append(src)
                stack.append((src, iter(edges.get(src, []))))
    return errors


def execution_order(prompt: dict, node_classes: dict) -> tuple[list[str], list[str]]:
    """(nodes to run in topological order, nodes skipped). Like ComfyUI, only output nodes and what they depend on
    run; ties run in node-id order. Assumes a validated, acyclic prompt."""
    deps = {nid: sorted({v[0] for v in node.get("inputs", {}).values() if is_link(v)}, key=node_sort_key)
            for nid, node in prompt.items()}
    needed: set[str] = set()
    todo = [nid for nid, node in prompt.items() if is_output_node(node_classes[node["class_type"]])]
    while todo:
        n = todo.pop()
        if n not in needed:
            needed.add(n)
            todo += deps[n]
    order: list[str] = []
    done: set[str] = set()
    remaining = sorted(needed, key=node_sort_key)
    while remaining:
        ready = [n for n in remaining if all(d in done for d in deps[n])]
        if not ready:  # pragma: no cover - validation rejects cycles
            raise WorkflowError(NodeError(remaining[0], None, None, "cycle", "cycle"))
        n = ready[0]
        order.append(n)
        done.add(n)
        remaining.remove(n)
    skipped = sorted(set(prompt) - needed, key=node_sort_key)
    return order, skipped


def validate(api_prompt: dict, node_classes: dict, *, input_dir=None) -> None:
    """Raise WorkflowError listing every problem in an API-format prompt; return None if it can run.
    ``input_dir``: the folder LoadImage checks its file in (default: the run's, or ``./input``)."""
    import contextlib
    import os

    from .comfy_core_nodes import directories, get_directory

    ctx = contextlib.nullcontext() if input_dir is None else directories(
        get_directory("output"), os.fspath(input_dir), get_directory("temp"))
    with ctx:
        _, errors, _ = check(api_prompt, node_classes)
    if errors:
        raise WorkflowError(errors)
