"""HunyuanVideo 1.0 and 1.5, HunyuanImage 2.1 (comfy/ldm/hunyuan_video/model.py, ``HunyuanVideo``; FLUX's double
and single blocks).

- Split: the forward has no split point of its own; at the first double block's input each rank keeps its slice of
  the text stream (prompt, and 1.5's ByT5 and vision tokens) and of the video's tokens (any reference latent's
  first), through ComfyUI's block replacement (a ``BlockSplit`` with a text stream). The text refiner before the
  blocks attends to the whole prompt on each rank.
- Per-token arguments of every block: the RoPE table ``pe`` and the text key mask (text then video, cut to this
  rank's part of each; the attention gathers the whole key mask once per call: Ulysses only), and the modulation
  ranges of image-to-video's first frame (``modulation_dims*``: positions of the whole sequence made this rank's).
- Gather: after the last block, the video's tokens of every rank: after a single block behind this rank's text,
  which the forward cuts away; after a double block (1.5 has no single blocks) the video stream alone, which the
  forward puts behind this rank's text and cuts away again.
- Limits: a text mask runs with Ulysses only (ring never holds the whole key sequence); a custom ControlNet's
  residuals run on one GPU (ComfyUI ships no HunyuanVideo ControlNet).
- Heads: ``num_heads``, the width / 128 ComfyUI detects (24 for HunyuanVideo 1.0, 16 for 1.5).
"""
import torch

from .adapter import Adapter, BlockSplit, gather_main_tokens


def _model_class():
    import comfy.ldm.hunyuan_video.model
    return comfy.ldm.hunyuan_video.model.HunyuanVideo


def _local_parts(call, rank, stream):
    """(global start, length) of ``rank``'s tokens, in its local order, in the coordinates of ``stream``: "text",
    "video" or "joint" (the single blocks' text-then-video sequence)."""
    text = (sum(call.txt_sizes[:rank]), call.txt_sizes[rank])
    video = (sum(call.main_sizes[:rank]), call.main_sizes[rank])
    if stream == "text":
        return (text,)
    if stream == "video":
        return (video,)
    return text, (sum(call.txt_sizes) + video[0], video[1])


def _local_modulation(ranges, parts):
    """ComfyUI's modulation ranges [(start, stop or None, row)] over a whole sequence as the same rows over this
    rank's tokens (``parts``: their (global start, length) in local order)."""
    local, offset = [], 0
    for start, length in parts:
        for first, stop, row in ranges:
            stop = start + length if stop is None else stop
            lo, hi = max(first, start), min(stop, start + length)
            if hi > lo:
                local.append((lo - start + offset, hi - start + offset, row))
        offset += length
    return local


def _cut(value, parts, dim):
    pieces = [value.narrow(dim, start, length) for start, length in parts if length]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


class HunyuanVideoAdapter(Adapter):
    name = "hunyuan_video"
    split = BlockSplit("img", text="txt", local_attention=(r"txt_in",),
                       per_token=("pe", "attention_mask", "modulation_dims_img", "modulation_dims_txt",
                                  "modulation_dims"))
    block_lists = (("double_blocks", "double_block"), ("single_blocks", "single_block"))
    limits = (("a text attention mask with ring or USP", "the key mask is applied after the Ulysses exchange "
               "gathers the whole sequence; ring attention never holds it"),
              ("ControlNet residuals", "ComfyUI ships no HunyuanVideo ControlNet; a custom one's residuals are added "
               "over the whole video and run on one GPU"))

    def supports(self, diffusion_model):
        return type(diffusion_model) is _model_class()

    def num_heads(self, diffusion_model):
        return diffusion_model.num_heads

    def per_token_slice(self, name, value, call, rank):
        if name.startswith("modulation_dims"):
            stream = {"modulation_dims_img": "video", "modulation_dims_txt": "text"}.get(name, "joint")
            return _local_modulation(value, _local_parts(call, rank, stream))
        cached = call.per_token.get(name)
        if cached is None or cached[0] is not value:
            # pe: (B, 1, L, ...) over text then video; the key mask: (B, 1, L).
            dim = 2 if name == "pe" else -1
            cached = call.per_token[name] = (value, _cut(value, _local_parts(call, rank, "joint"), dim))
        return cached[1]

    def gather_block_output(self, out, call):
        if "txt" in out:   # a model without single blocks (1.5): the last double block's video stream
            out["img"] = gather_main_tokens(out["img"], call)
            return out
        text = call.txt_sizes[call.mesh.sp_rank]   # a single block's text-then-video sequence
        out["img"] = gather_main_tokens(out["img"], call, start=text, lead=text)
        return out

    def family_reason(self, arguments, diffusion_model, ring_degree):
        if arguments.get("control") is not None:
            return "the model carries ControlNet residuals, which the HunyuanVideo adapter does not split"
        if arguments.get("attention_mask") is not None and ring_degree > 1:
            return ("the conditioning carries a text attention mask, which runs sequence-parallel with parallelism "
                    "'ulysses' only; set parallelism to 'ulysses'")
        return None

    def token_counts(self, arguments, diffusion_model):
        """(text tokens: the prompt's, plus 1.5's ByT5 and vision tokens; the video's tokens, any reference
        latent's included, as the patch embedding makes them; 0)."""
        patch = diffusion_model.patch_size

        def tokens(latent):
            count = 1
            for size, step in zip(latent.shape[-len(patch):], patch):
                count *= -(-size // step)
            return count

        text = arguments["context"].shape[1]
        if diffusion_model.byt5_in is not None and arguments.get("txt_byt5") is not None:
            text += arguments["txt_byt5"].shape[1]
        if arguments.get("clip_fea") is not None:
            text += arguments["clip_fea"].shape[1]
        video = tokens(arguments["x"])
        if arguments.get("ref_latent") is not None:
            video += tokens(arguments["ref_latent"])
        return text, video, 0


ADAPTER = HunyuanVideoAdapter()
