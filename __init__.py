"""FaceSmith: a ComfyUI node pack (this folder is the ComfyUI package; installed with pip it is ``facesmith``).

ComfyUI imports this file by path as a module named after the folder, so everything inside the pack uses relative
imports only (ComfyUI has its own top-level ``nodes`` module).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"  # web/facesmith.js: text results and the live loss chart on the nodes
__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__"]
