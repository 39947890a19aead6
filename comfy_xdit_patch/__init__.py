"""comfy-xdit-patch: one image on several GPUs, by sequence parallelism (or CFG/batch parallelism) patched into
ComfyUI's own model.

This package imports nothing of ComfyUI at import time, so helper processes can import it before ComfyUI is set up.
"""
__version__ = "0.1.0"
