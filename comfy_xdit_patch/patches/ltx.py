"""LTX-Video and LTX-2 (comfy/ldm/lightricks: ``LTXVModel``, and ``LTXAVModel`` with its audio stream).

- Split: the forward has no split point of its own; the video tokens (after any keyframe guides are appended and
  masked) are split at the first block's input and gathered at the last block's output, through ComfyUI's block
  replacement (a ``BlockSplit``). LTX-2's audio stream is short (25 tokens a second): every rank keeps all of it and
  computes the same audio updates.
- Per-token arguments: the video's timestep modulation (a tensor, or LTX-2's per-frame ``CompressedTimestep``, which
  each rank keeps per frame and cuts after expanding) and its RoPE table.
- Local: cross-attention to the text (and LTX-2's audio self- and text attention, and the audio-to-video attention,
  whose queries are this rank's video tokens). LTX-2's video-to-audio attention, whose keys are the whole video,
  runs on each rank over its own video tokens and merges the partial results across ranks by their log-sum-exp.
- Limits: guide attention strengths other than 1 or a guide's pixel mask (LTXVAddGuide's attention mask), and CFG
  groups on LTX-2, whose input is a list of streams, run on one GPU with the reason; LTX's VAEs decode on one GPU.
- Heads: ``num_attention_heads`` (32 for LTX-Video 2B / 13B and LTX-2).
"""
import functools

from ..parallel.call import active_call
from ..parallel.token_split import gather_shards, take_shard
from . import hooks
from .adapter import Adapter, BlockSplit, local_attention


def _classes():
    import comfy.ldm.lightricks.av_model
    import comfy.ldm.lightricks.model
    return comfy.ldm.lightricks.model.LTXVModel, comfy.ldm.lightricks.av_model.LTXAVModel


def _compressed_timestep_class():
    import comfy.ldm.lightricks.av_model
    return comfy.ldm.lightricks.av_model.CompressedTimestep


@functools.lru_cache(maxsize=1)
def _frame_slice_class():
    """A ``CompressedTimestep`` over this rank's tokens: the frames they touch, per frame, cut after expanding (the
    same values ComfyUI computes, without expanding every frame of the video)."""
    base = _compressed_timestep_class()

    class FrameSlice(base):
        __slots__ = ("offset", "length")

        def expand(self):
            return super().expand().narrow(1, self.offset, self.length)

        def expand_for_computation(self, scale_shift_table, batch_size, indices=slice(None, None)):
            return tuple(value.narrow(1, self.offset, self.length)
                         for value in super().expand_for_computation(scale_shift_table, batch_size, indices))

    return FrameSlice


def _local_timestep(value, start, length):
    """A video timestep modulation (B, 1 or tokens, D), or a ``CompressedTimestep``, over the tokens
    [start, start + length)."""
    compressed = _compressed_timestep_class()
    if not isinstance(value, compressed):
        return value if value.shape[1] == 1 else value.narrow(1, start, length)
    if value.patches_per_frame == 1:   # per token, or one row for all
        if value.data.shape[1] == 1:
            return value
        return compressed(value.data.narrow(1, start, length), None)
    per_frame = value.patches_per_frame
    first, last = start // per_frame, -(-(start + length) // per_frame)
    local = _frame_slice_class()(value.data[:, first:last], per_frame, per_frame=True)
    local.offset, local.length = start - first * per_frame, length
    return local


def _local_rope(value, call, rank, name):
    """LTX's RoPE (rotation matrices (B, tokens, heads, ...), split mode), cut once per call."""
    cached = call.per_token.get(name)
    if cached is None or cached[0] is not value:
        matrix, split_mode = value
        cached = call.per_token[name] = (value, (take_shard(matrix, call.main_sizes, rank), split_mode))
    return cached[1]


def _guide_attention_mask(arguments):
    """Whether ComfyUI builds LTX's guide attention mask for this call (a guide's strength other than 1, or its
    pixel mask): its self-attention then takes a mask object over the whole sequence."""
    entries = arguments.get("guide_attention_entries") or ()
    return any(e.get("strength", 1.0) != 1.0 or e.get("pixel_mask") is not None for e in entries)


def _audio_to_video(adapter, forward, name, names):
    """Queries from this rank's video tokens, keys from the whole audio: local, with the queries' RoPE cut."""
    local = local_attention(forward)

    @hooks.ours
    @functools.wraps(forward)
    def attention(*args, **kwargs):
        call = active_call(kwargs.get("transformer_options"))
        if call is not None and kwargs.get("pe") is not None:
            kwargs["pe"] = _local_rope(kwargs["pe"], call, call.mesh.sp_rank, "v_cross_pe")
        return local(*args, **kwargs)

    return attention


def _video_to_audio(adapter, forward, name, names):
    """Queries from the whole audio (on every rank), keys from the video (split): each rank attends over its own
    video tokens, with the keys' RoPE cut to them, and the partial results merge across the ranks (the size of the
    audio's output travels, not the video's)."""
    @hooks.ours
    @functools.wraps(forward)
    def attention(*args, **kwargs):
        call = active_call(kwargs.get("transformer_options"))
        if call is None:
            return forward(*args, **kwargs)
        if kwargs.get("k_pe") is not None:
            kwargs["k_pe"] = _local_rope(kwargs["k_pe"], call, call.mesh.sp_rank, "v_cross_pe")
        call.keys_split = True
        try:
            return forward(*args, **kwargs)
        finally:
            call.keys_split = False

    return attention


_LTX_VAE_CONFIG = ("LTX's VAEs read their configuration from the file's metadata and may add random noise while "
                   "decoding, neither of which a helper rebuilding one from its weights shares")


class LTXVideoAdapter(Adapter):
    name = "ltxv"
    # LTX's VAEs: random noise at decode (timestep conditioning, injected noise, a diffusion decoder) drawn from
    # ComfyUI's random state, and configurations read from the file's metadata.
    vae_unspreadable = {"comfy.ldm.lightricks.vae.causal_video_autoencoder.VideoVAE": _LTX_VAE_CONFIG,
                        "comfy.ldm.lightricks.vae.na_diffusion_decoder.CausalDiffusionVAE": _LTX_VAE_CONFIG,
                        "comfy.ldm.lightricks.vae.audio_vae.AudioVAE": _LTX_VAE_CONFIG}
    split = BlockSplit("img", per_token=("vec", "pe"), local_attention=(r"transformer_blocks\.\d+\.attn2",))
    block_lists = (("transformer_blocks", "double_block"),)
    limits = (("guide attention strengths other than 1 (LTXVAddGuide)", "the guide attention mask is an object over "
               "the whole sequence that ComfyUI's attention applies by query groups; those calls run on one GPU"),)

    def supports(self, diffusion_model):
        return type(diffusion_model) is _classes()[0]

    def num_heads(self, diffusion_model):
        return diffusion_model.num_attention_heads

    def per_token_slice(self, name, value, call, rank):
        if name == "pe":
            return _local_rope(value, call, rank, name)
        return _local_timestep(value, sum(call.main_sizes[:rank]), call.main_sizes[rank])

    def family_reason(self, arguments, diffusion_model, ring_degree):
        if _guide_attention_mask(arguments):
            return ("a guide's attention strength is not 1 or it has a pixel mask (LTXVAddGuide), which builds a "
                    "guide attention mask the sequence-parallel attention does not split; set its strength to 1 and "
                    "remove its mask to run in parallel")
        return None

    def token_counts(self, arguments, diffusion_model):
        """(None: the text is only cross-attended, the video's tokens (one per latent pixel), 0)."""
        video = arguments["x"][0] if isinstance(arguments["x"], (list, tuple)) else arguments["x"]
        count = 1
        for size in video.shape[2:]:
            count *= size
        return None, count, 0


class LTXAudioVideoAdapter(LTXVideoAdapter):
    name = "ltxav"
    split = BlockSplit("img", per_token=("v_timestep", "v_pe", "v_cross_scale_shift_timestep",
                                         "v_cross_gate_timestep"),
                       local_attention=(r"transformer_blocks\.\d+\.(attn2|audio_attn1|audio_attn2)",))
    module_wrappers = ((r"transformer_blocks\.\d+\.audio_to_video_attn", _audio_to_video),
                       (r"transformer_blocks\.\d+\.video_to_audio_attn", _video_to_audio))
    streams_input = True
    limits = LTXVideoAdapter.limits + (
        ("CFG groups", "the input is a list of video and audio streams: all GPUs form one sequence-parallel group"),)

    def supports(self, diffusion_model):
        return type(diffusion_model) is _classes()[1]

    def per_token_slice(self, name, value, call, rank):
        if name == "v_pe":
            return _local_rope(value, call, rank, name)
        return _local_timestep(value, sum(call.main_sizes[:rank]), call.main_sizes[rank])

    def split_block_input(self, args, call, rank):
        video, audio = args["img"]
        call.plan_tokens(0, video.shape[1])
        args["img"] = (take_shard(video, call.main_sizes, rank), audio)

    def gather_block_output(self, out, call):
        video, audio = out["img"]
        out["img"] = (gather_shards(video, call.main_sizes, call.mesh.sp_rank, group=call.mesh.sp_group), audio)
        return out


VIDEO_ADAPTER = LTXVideoAdapter()
AUDIO_VIDEO_ADAPTER = LTXAudioVideoAdapter()
