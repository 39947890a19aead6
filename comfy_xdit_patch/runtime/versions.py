"""The versions a helper must share with rank 0: ComfyUI's (the model classes and forward code) and this plugin's
(the wire protocol and the hooks). Checked when a helper joins, before any work."""
import os


def local_versions():
    import comfy_xdit_patch
    versions = {"comfy_xdit_patch": comfy_xdit_patch.__version__, "comfyui": _comfyui_version()}
    return versions


def _comfyui_version():
    """ComfyUI's version file, read without importing ComfyUI (helpers check before they import it)."""
    for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) + [os.environ.get("COMFYUI_PATH", "")]:
        candidate = os.path.join(path, "comfyui_version.py")
        if path and os.path.isfile(candidate):
            scope = {}
            with open(candidate) as f:
                exec(f.read(), scope)
            return scope.get("__version__")
    return None


def mismatch(rank0, helper):
    """A message naming every difference, or None."""
    differences = [f"{name} {helper.get(name)} on the helper vs {value} on rank 0"
                   for name, value in rank0.items() if helper.get(name) != value]
    if not differences:
        return None
    return ("helper versions differ from ComfyUI's: " + "; ".join(differences) +
            ". Install the same ComfyUI and comfy-xdit-patch on every machine.")
