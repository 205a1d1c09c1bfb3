"""Build UI-format workflows (what ComfyUI's graph editor saves and its template browser shows) from a compact
description, using the node classes' INPUT_TYPES so widget order matches what the editor would save.

Used to author the shipped workflows in ``workflows/`` (``python -m facesmith.core.runner.ui_builder``) and by
tests; the API twin of each comes from :func:`facesmith.core.runner.to_api`, so the two never drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .spec import input_specs, return_types
from .graph import _widget_slots


@dataclass
class UINode:
    id: int
    type: str
    widgets: dict = field(default_factory=dict)   # input name -> value (others take their defaults)
    links: dict = field(default_factory=dict)     # input name -> (source node id, output index)
    pos: tuple = (0, 0)
    title: str | None = None


# Layout, in LiteGraph's units as ComfyUI's editor (frontend 1.27) draws them: a node's title bar sits ABOVE its
# ``pos``; each socket row and widget row has a fixed height. Sizes here are at least what the editor computes, plus
# room for what appears on the node at run time (image previews, web/facesmith.js's text box and loss chart), so
# nothing is hidden and nothing grows over a neighbour.
TITLE_H, SLOT_H, WIDGET_H, MULTILINE_H, PAD, GAP, WIDTH = 30, 20, 24, 80, 16, 40, 320
RUNTIME_H = {"SaveImage": 220, "PreviewImage": 220, "FaceSmithJudgeFaces": 120, "FaceSmithSaveConcept": 80,
             "FaceSmithFaceAnalysis": 120, "FaceSmithFaceSimilarity": 120, "FaceSmithTrainDomainEncoder": 240,
             "FaceSmithEmbedConcept": 130, "FaceSmithLoadInstructModel": 80, "FaceSmithInstructGenerate": 80,
             "FaceSmithTrainInstructModel": 240}


def node_height(n_socket_rows: int, widget_kinds: list[str], node_type: str) -> int:
    """Body height (below the title) for sockets, widgets (``"multiline"`` or ``"row"``) and run-time content."""
    widgets = sum(MULTILINE_H if k == "multiline" else WIDGET_H for k in widget_kinds)
    return n_socket_rows * SLOT_H + widgets + PAD + RUNTIME_H.get(node_type, 0)


def _stack_columns(ui_nodes: list[dict]) -> None:
    """Nodes sharing an x are a column; each is moved down (never up) until it clears the one above it."""
    columns: dict = {}
    for node in ui_nodes:
        columns.setdefault(node["pos"][0], []).append(node)
    for column in columns.values():
        bottom = None
        for node in sorted(column, key=lambda nd: nd["pos"][1]):
            if bottom is not None:
                node["pos"][1] = max(node["pos"][1], bottom + GAP + TITLE_H)
            bottom = node["pos"][1] + node["size"][1]


def _default(spec) -> Any:
    if "default" in spec.options:
        return spec.options["default"]
    if spec.type == "COMBO" and spec.choices:
        return spec.choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec.type)


def build_ui_workflow(nodes: list[UINode], node_classes: dict) -> dict:
    """A UI-format workflow (version 0.4) with node sizes, slots, links and widgets_values."""
    by_id = {n.id: n for n in nodes}
    links, out_links = [], {}
    link_id = 0
    ui_nodes = []
    for order, n in enumerate(nodes):
        cls = node_classes[n.type]
        specs = input_specs(cls)
        unknown = set(n.links) - set(specs)
        if unknown:
            raise ValueError(f"node {n.id} ({n.type}) has no input(s) {sorted(unknown)}")
        # sockets as the editor creates them: every link-type input (linked or not) in declaration order, then
        # the widgets that were turned into sockets because a link feeds them
        socket_names = [k for k, s in specs.items() if not s.is_widget] + \
                       [k for k, s in specs.items() if s.is_widget and k in n.links]
        inputs = []
        for name in socket_names:
            entry = {"name": name, "type": specs[name].type, "link": None}
            if name in n.links:
                src, idx = n.links[name]
                link_id += 1
                src_type = return_types(node_classes[by_id[src].type])[idx]
                links.append([link_id, src, idx, n.id, len(inputs), src_type])
                out_links.setdefault((src, idx), []).append(link_id)
                entry["link"] = link_id
                if specs[name].type == "COMBO":
                    entry["type"] = src_type
            if specs[name].is_widget:
                entry["widget"] = {"name": name}
            inputs.append(entry)
        for name in n.widgets:
            if name not in specs or not specs[name].is_widget:
                raise ValueError(f"node {n.id} ({n.type}): {name!r} is not a widget input")
        values, shown = [], []
        for kind, name in _widget_slots(specs):
            if name in n.links:
                if kind == "value":
                    values.append(_default(specs[name]))
                continue
            if kind == "value":
                values.append(n.widgets.get(name, _default(specs[name])))
                shown.append("multiline" if specs[name].options.get("multiline") else "row")
            elif kind == "control":
                values.append("fixed")
                shown.append("row")
            elif kind == "upload":
                values.append("image")
                shown.append("row")
        rows = max(len([i for i in inputs if "widget" not in i]), len(return_types(cls)), 1)
        ui_nodes.append({"id": n.id, "type": n.type, "pos": list(n.pos),
                         "size": [WIDTH, node_height(rows, shown, n.type)],
                         "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                         "properties": {"Node name for S&R": n.type}, "widgets_values": values,
                         **({"title": n.title} if n.title else {})})
    _stack_columns(ui_nodes)
    for node in ui_nodes:
        cls = node_classes[node["type"]]
        names = getattr(cls, "RETURN_NAMES", None) or return_types(cls)
        node["outputs"] = [{"name": nm, "type": t, "links": out_links.get((node["id"], i), []), "slot_index": i}
                           for i, (nm, t) in enumerate(zip(names, return_types(cls)))]
    return {"last_node_id": max(by_id), "last_link_id": link_id, "nodes": ui_nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}
