"""ComfyUI entry point when this repository is cloned into ComfyUI/custom_nodes/.

The package is imported under its own top-level name (as a pip install would), never as a submodule of this folder:
helper processes import ``comfy_xdit_patch`` by that name, and what rank 0 sends them must unpickle there.
"""
import logging
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_loaded = sys.modules.get("comfy_xdit_patch")
_loaded_from = os.path.dirname(os.path.dirname(os.path.abspath(_loaded.__file__))) if _loaded else None

if _loaded_from not in (None, _here):
    # A second copy (a Manager install beside a clone, a renamed backup): the first one's nodes, route and tab stand;
    # loading this one too would register the route twice, which stops ComfyUI from starting.
    logging.warning("Enable Multi-GPU: skipping the copy in %s, the plugin is already loaded from %s; remove one "
                    "of the two folders from custom_nodes", _here, _loaded_from)
    NODE_CLASS_MAPPINGS = {}
    __all__ = ["NODE_CLASS_MAPPINGS"]
else:
    if _here not in sys.path:
        sys.path.insert(0, _here)
    from comfy_xdit_patch.nodes import comfy_entrypoint  # noqa: E402

    WEB_DIRECTORY = "./web/js"   # the Multi-GPU tab (web/js/xdit_panel.js)
    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
