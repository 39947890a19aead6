"""What a helper must share with rank 0 to compute the same step: ComfyUI (the model classes and forward code), this
plugin's code (the wire protocol and the hooks), torch, CUDA and NCCL. Checked when a helper joins, before any work."""
import functools
import hashlib
import os


def local_versions():
    import torch
    import comfy_xdit_patch
    import comfyui_version   # ComfyUI's version file: on sys.path in rank 0, on PYTHONPATH in helpers
    return {
        "comfy_xdit_patch": comfy_xdit_patch.__version__,
        "plugin code": plugin_code_digest(),
        "comfyui": comfyui_version.__version__,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "nccl": _nccl_version(),
    }


@functools.lru_cache(maxsize=1)
def plugin_code_digest():
    """SHA-256 of every Python file of the installed plugin: two installs of one version string can still differ."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def _nccl_version():
    import torch
    try:
        return ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:   # a build without NCCL (CPU ranks use gloo)
        return None


def mismatch(rank0, helper):
    """A message naming every difference, or None."""
    differences = [f"{name} {helper.get(name)} on the helper vs {value} on rank 0"
                   for name, value in rank0.items() if helper.get(name) != value]
    if not differences:
        return None
    return ("helper versions differ from ComfyUI's: " + "; ".join(differences) +
            ". Install the same ComfyUI, torch and comfy-xdit-patch on every machine.")
