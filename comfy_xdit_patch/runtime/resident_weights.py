"""Step graphs for a model under ComfyUI's dynamic VRAM (comfy-aimdo, ComfyUI's default on NVIDIA).

Such a model keeps its weights in one virtual address range (a "vbar") whose 32 MB pages are mapped in and out of
VRAM as memory is needed; each weight stays at its virtual address. A captured step reads the weights where they
were, so a replay is right only while every page of the range stayed resident since the capture: a page that was
evicted and faulted back has lost its data (ComfyUI copies a weight in again when its own per-weight signature says
so). ComfyUI's own block graphs (comfy/model_prefetch.py) check it the same way, and so does this: fault the range
(which also pins it against eviction during the step), compare the pages' signature with the one taken at capture,
and unpin once the step is done.
"""
import logging

log = logging.getLogger(__name__)


class ResidentWeights:
    """The vbar range holding a dynamic-VRAM diffusion model's weights (``modules``: those with a vbar allocation,
    ComfyUI's ``_v``)."""

    def __init__(self, modules, vbar, start, size):
        self.modules, self.vbar, self.start, self.size = modules, vbar, start, size
        self.captured = None   # the range's page signature when the step graphs were captured
        self.pinned = False

    @classmethod
    def of(cls, diffusion_model, excluded=()):
        """None for a model without vbar weights (classic loading), or whose weights span several vbars.
        ``excluded``: submodules whose weights the step does not read from the vbar (sharded blocks: their weights
        are gathered into buffers of our own)."""
        skip = {id(m) for part in excluded for m in part.modules()}
        modules = [m for m in diffusion_model.modules() if getattr(m, "_v", None) is not None and id(m) not in skip]
        if not modules:
            return None
        vbars = {id(m._v[0]) for m in modules}
        if len(vbars) != 1:
            log.info("Enable Multi-GPU: the model's dynamic-VRAM weights span %d ranges; its steps run eagerly",
                     len(vbars))
            return None
        start = min(m._v[1] for m in modules)
        end = max(m._v[1] + m._v[2] for m in modules)
        return cls(modules, modules[0]._v[0], start, end - start)

    def pin_for_capture(self):
        """Before a capture: every weight resident with its data (its page signature as ComfyUI last saw it when it
        copied the weight in), then the range pinned and its signature kept. False (nothing pinned) otherwise: the
        step runs eagerly and ComfyUI brings the weights in."""
        import comfy_aimdo.model_vbar as model_vbar
        for module in self.modules:
            signature = model_vbar.vbar_fault(module._v)
            if signature is None:
                return False
            try:
                if not model_vbar.vbar_signature_compare(signature, getattr(module, "_v_signature", None)):
                    return False
            finally:
                model_vbar.vbar_unpin(module._v)
        signature = self.vbar.fault(self.start, self.size)
        if signature is None:
            return False
        self.captured, self.pinned = signature, True
        return True

    def pin_for_replay(self):
        """Before a replay: True with the range pinned when every page stayed resident since the capture; False
        (nothing pinned) otherwise, and the graphs must be captured anew."""
        import comfy_aimdo.model_vbar as model_vbar
        signature = self.vbar.fault(self.start, self.size)
        if signature is None:
            return False
        if self.captured is not None and model_vbar.vbar_signature_compare(signature, self.captured):
            self.pinned = True
            return True
        self.vbar.unpin(self.start, self.size)
        return False

    def unpin(self):
        """After the step (also a failed one)."""
        if self.pinned:
            self.pinned = False
            self.vbar.unpin(self.start, self.size)
