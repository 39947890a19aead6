"""MiniMax H3 (comfy/ldm/minimax/model.py, ``MiniMaxH3Model``): text-, image- and reference-to-video with audio.

- Input: one list of streams, [video latent, audio latent], of one batch row; cond and uncond are separate calls.
  Its calls run sequence-parallel over one group of every GPU, the tokens split evenly; with CFG groups
  (``sequence_degree`` below the GPU count) they run on one GPU, naming the setting.
- Split: the forward packs text, condition or reference rows, audio and video into one sequence without a batch
  dimension; it is split at the first block's input and gathered at the last block's output, through ComfyUI's
  block replacement (a ``BlockSplit`` over dimension 0).
- Per-token arguments: the RoPE rotation table and the modulation segments (ranges of the packed sequence, each
  with its modulation row or a row per token), made this rank's.
- Local: the token refiner, which attends over the text alone before the split.
- The call's payload travels without its packed layout, which every rank rebuilds from the same shapes, and with
  the audio rescaling marked done: rank 0's forward applies it around the call, and every rank runs the rest.
- Heads: 56 (Ulysses 2, 4, 7, 8).
"""
from ..parallel.token_split import take_shard
from .adapter import Adapter, BlockSplit


def _model_class():
    import comfy.ldm.minimax.model
    return comfy.ldm.minimax.model.MiniMaxH3Model


def _local_segments(segments, start, length):
    """[(a, b, row)] over the packed sequence, ``row`` a modulation row or a row per token, as the same rows over
    this rank's tokens [start, start + length)."""
    local = []
    for a, b, row in segments:
        lo, hi = max(a, start), min(b, start + length)
        if hi > lo:
            local.append((lo - start, hi - start, row if isinstance(row, int) else row[lo - a:hi - a]))
    return local


class MiniMaxAdapter(Adapter):
    name = "minimax"
    split = BlockSplit("img", per_token=("rope_freqs", "mod_segments"), local_attention=(r"token_refiner",),
                       token_dim=0)
    block_lists = (("blocks", "double_block"),)
    streams_input = True
    # Its video VAE tiles inside its own decode (spatial tiles of each temporal chunk): one tile per call of this.
    vae_tile_decoders = {"comfy.ldm.minimax.vae.MiniMaxH3VideoVAE": "_decode_pixels"}
    limits = (("CFG groups and token splits by measured speed", "every call holds one row (cond and uncond are "
               "separate calls): all GPUs form one sequence-parallel group and split the tokens evenly"),)

    def supports(self, diffusion_model):
        return type(diffusion_model) is _model_class()

    def num_heads(self, diffusion_model):
        return diffusion_model.blocks[0].attn.heads

    def per_token_slice(self, name, value, call, rank):
        start, length = sum(call.main_sizes[:rank]), call.main_sizes[rank]
        if name == "mod_segments":
            return _local_segments(value, start, length)
        cached = call.per_token.get(name)
        if cached is None or cached[0] is not value:   # the rotation table (1, S, 1, ...): cut once per call
            cached = call.per_token[name] = (value, take_shard(value, call.main_sizes, rank))
        return cached[1]

    def call_arguments(self, arguments):
        payload = arguments.get("minimax_payload")
        if payload:
            # The layout object is rebuilt by every rank from the same shapes; forward's audio rescaling ran on
            # rank 0 around this call, so the helpers' forward must not apply it again.
            payload = {key: value for key, value in payload.items() if key != "layout"}
            payload["audio_scale"] = 1.0
            arguments = dict(arguments, minimax_payload=payload)
        return arguments

    def token_counts(self, arguments, diffusion_model):
        """(None: no separate text stream, the packed sequence's length, 0)."""
        import comfy.ldm.minimax.model as minimax
        from comfy.ldm.common_dit import pad_to_patch_size
        video, audio = arguments["x"][0], arguments["x"][1]
        payload = arguments.get("minimax_payload") or {}
        t, h, w = pad_to_patch_size(video[:, :1], diffusion_model.patch_size).shape[2:]
        signature = (arguments["context"].shape[1], t, h, w, audio.shape[-1])
        layout = payload.get("layout")
        if layout is None or layout.signature != signature:
            layout = minimax.PackedLayout(*signature, keyframes=payload.get("keyframes"), refs=payload.get("refs"))
        return None, layout.seq_len, 0


ADAPTER = MiniMaxAdapter()
