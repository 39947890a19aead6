"""ComfyUI entry point when this repository is cloned into ComfyUI/custom_nodes/.

The package is imported under its own top-level name (as a pip install would), never as a submodule of this folder:
helper processes import ``comfy_xdit_patch`` by that name, and what rank 0 sends them must unpickle there.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

from comfy_xdit_patch.nodes import comfy_entrypoint  # noqa: E402

WEB_DIRECTORY = "./web/js"   # the live status panel (web/js/xdit_panel.js)

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
