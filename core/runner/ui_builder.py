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
        values = []
        for kind, name in _widget_slots(specs):
            if name in n.links:
                if kind == "value":
                    values.append(_default(specs[name]))
                continue
            if kind == "value":
                values.append(n.widgets.get(name, _default(specs[name])))
            elif kind == "control":
                values.append("fixed")
            elif kind == "upload":
                values.append("image")
        ui_nodes.append({"id": n.id, "type": n.type, "pos": list(n.pos), "size": [320, 60 + 26 * (len(values) + 1)],
                         "flags": {}, "order": order, "mode": 0, "inputs": inputs,
                         "properties": {"Node name for S&R": n.type}, "widgets_values": values,
                         **({"title": n.title} if n.title else {})})
    for node in ui_nodes:
        cls = node_classes[node["type"]]
        names = getattr(cls, "RETURN_NAMES", None) or return_types(cls)
        node["outputs"] = [{"name": nm, "type": t, "links": out_links.get((node["id"], i), []), "slot_index": i}
                           for i, (nm, t) in enumerate(zip(names, return_types(cls)))]
    return {"last_node_id": max(by_id), "last_link_id": link_id, "nodes": ui_nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}
