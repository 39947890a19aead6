"""SD3 / SD3.5 (ComfyUI's MMDiT, comfy/ldm/modules/diffusionmodules/mmdit.py): SD3 Medium, SD3.5 Medium and Large.

- Split: ``forward_core_with_concat`` receives the embedded image tokens ``x`` (position embedding already added)
  and text tokens ``context``: each rank keeps its slice of both.
- Per-token arguments besides the tokens: ControlNet residuals (``control["output"]``, one per block, over the
  image tokens).
- Gather: that method's return value, the image tokens after the final layer (which acts on each token alone),
  before ``forward`` unpatchifies them.
- Heads: 24 (SD3 Medium, SD3.5 Medium), 38 (SD3.5 Large: Ulysses 2 or 19; ring or USP for 4 and 8).
- Attention: the joint attention (text then image tokens, as FLUX) and SD3.5 Medium's second, image-only attention
  both go through the override; each finds its layout from its local length (the call's text + image or image).
- Its forward runs no DIFFUSION_MODEL wrappers: rank 0 hands each call to the helpers through an object patch on
  ``forward`` (patches/adapter.py).
"""
from .adapter import Adapter, TokenSplit


def _model_class():
    import comfy.ldm.modules.diffusionmodules.mmdit
    return comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper


class MMDiTAdapter(Adapter):
    name = "mmdit"
    split = TokenSplit("forward_core_with_concat", image=("x",), text=("context",), residuals=("control",))
    block_lists = (("joint_blocks", "double_block"),)
    limits = (("register tokens (register_length > 0)",
               "they are prepended to the text inside the split method, so each rank would add its own copy; no "
               "released SD3 checkpoint has them"),
              ("a call without text (context None)", "the joint attention then has no text stream to split"))

    def supports(self, diffusion_model):
        return type(diffusion_model) is _model_class()

    def num_heads(self, diffusion_model):
        return diffusion_model.joint_blocks[0].x_block.attn.num_heads

    def family_reason(self, arguments, diffusion_model, ring_degree):
        if diffusion_model.register_length > 0:
            return "this MMDiT has register tokens, which are not split across GPUs"
        if arguments.get("context") is None:
            return "the call has no text conditioning to split"
        return None

    def token_counts(self, arguments, diffusion_model):
        patch = diffusion_model.patch_size
        height, width = arguments["x"].shape[-2:]
        return arguments["context"].shape[1], -(-height // patch) * -(-width // patch), 0


ADAPTER = MMDiTAdapter()
