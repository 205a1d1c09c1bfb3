"""Headless workflow runner: ``facesmith run WORKFLOW.json`` executes ComfyUI workflows (UI or API format) made of
FaceSmith nodes and the core LoadImage/SaveImage/PreviewImage nodes, without ComfyUI. It is not a second ComfyUI: it
supports what FaceSmith workflows need and says clearly what it does not (nodes from other packs, subgraphs, ...).

Public API::

    run_workflow(workflow, node_classes, out_dir, input_dir=None, overrides=None, progress=True) -> RunResult
    to_api(ui_workflow, node_classes) -> dict
    validate(api_prompt, node_classes) -> None   # raises WorkflowError listing every problem
"""
from .comfy_core_nodes import CORE_NODE_CLASS_MAPPINGS, CORE_NODE_DISPLAY_NAME_MAPPINGS
from .errors import ExecutionError, NodeError, WorkflowError
from .execute import RunResult, prepare, run_workflow
from .graph import detect_format, load_workflow_file, to_api
from .validate import apply_overrides, validate

__all__ = [
    "run_workflow", "to_api", "validate", "prepare", "apply_overrides", "load_workflow_file", "detect_format",
    "RunResult", "WorkflowError", "ExecutionError", "NodeError",
    "CORE_NODE_CLASS_MAPPINGS", "CORE_NODE_DISPLAY_NAME_MAPPINGS",
]
