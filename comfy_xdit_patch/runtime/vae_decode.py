"""ComfyUI's tiled VAE decode with its tiles spread over the helper GPUs.

ComfyUI's own tiled decode runs twice on rank 0 with its VAE's ``first_stage_model.decode`` hooked: the first run
records the tiles it asks for (answering placeholders of the decoded size), then every GPU decodes its share of them,
and the second run is answered tile by tile with the decoded pixels. The tiles, their order and the blending are
ComfyUI's own, so the image equals its tiled decode with the same tile settings.
"""
import contextlib
import logging


log = logging.getLogger(__name__)


def decode_tile(first_stage_model, tile, dtype, output_dtype, device):
    """One tile as ComfyUI's tiled decode computes it (``VAE.decode_tiled_*``'s decode function)."""
    return first_stage_model.decode(tile.to(dtype).to(device)).to(dtype=output_dtype)


def build_vae(state_dict, dtype, device):
    """A helper's copy of rank 0's VAE, built by ComfyUI from the same weights, on ``device`` in ``dtype``."""
    import comfy.sd
    vae = comfy.sd.VAE(sd=state_dict, device=device, dtype=dtype)
    vae.first_stage_model.to(device=device, dtype=dtype)
    return vae


def why_not_spread(vae):
    """Why this VAE's tiled decode cannot be spread over GPUs, or None."""
    if getattr(vae, "handles_tiling", False):
        return (f"{type(vae.first_stage_model).__name__} tiles inside its own decode, which ComfyUI's tiled decode "
                "does not split into tiles")
    return None


@contextlib.contextmanager
def _decode_answered_by(vae, answer):
    """``vae.first_stage_model.decode`` answered by ``answer(tile)`` for the duration (an instance attribute over the
    class's method, removed afterwards)."""
    model = vae.first_stage_model
    model.decode = lambda tile, *args, **kwargs: answer(tile)
    try:
        yield
    finally:
        del model.decode


def _decoded_shape(vae, tile):
    """The shape ComfyUI's tiled decode expects for a decoded ``tile`` (its upscale ratio per dimension)."""
    sizes = tile.shape[2:]
    ratios = vae.upscale_ratio if isinstance(vae.upscale_ratio, (tuple, list)) else [vae.upscale_ratio] * len(sizes)
    return (tile.shape[0], vae.output_channels) + tuple(
        round(ratio(size) if callable(ratio) else ratio * size) for ratio, size in zip(ratios, sizes))


def decode(vae, run):
    """``run()`` (ComfyUI's tiled decode of ``vae``) spread over the running helpers' GPUs; on one GPU, with the
    reason in the log, where there are none or the VAE tiles by itself, and after a helper fails."""
    from . import helper_group
    group = helper_group.current_group()
    reason = why_not_spread(vae)
    if reason is None and (group is None or not group.alive()):
        reason = "no helper GPUs are running (they start with a model that went through Enable Multi-GPU)"
    if reason is not None:
        log.info("Enable Multi-GPU: the tiled decode runs on one GPU because %s", reason)
        return run()
    try:
        return spread_decode(group, vae, run)
    except helper_group.HelperFailure as e:
        log.error("Enable Multi-GPU: the spread decode failed (%s); stopping the helpers and decoding on one GPU", e)
        helper_group.shutdown_group("a spread decode failed", graceful=False)
        return run()


def spread_decode(group, vae, run):
    """``run()`` (ComfyUI's tiled decode of ``vae``) with its tiles decoded on every GPU of ``group``."""
    tiles = []

    def record(tile):
        tiles.append(tile.contiguous())
        return tile.new_zeros(_decoded_shape(vae, tile))

    with _decode_answered_by(vae, record):
        run()
    if len(tiles) < 2:
        log.info("Enable Multi-GPU: the decode is one tile; it runs on one GPU")
        return run()
    decoded = iter(group.decode_tiles(vae, tiles))
    with _decode_answered_by(vae, lambda tile: next(decoded)):
        return run()
