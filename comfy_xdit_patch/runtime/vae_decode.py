"""ComfyUI's tiled VAE decode with its tiles spread over the helper GPUs.

ComfyUI's own tiled decode runs twice on rank 0 with the VAE model's tile decoder hooked (``decode``, which ComfyUI's
tiling calls once per tile, or the method a VAE that tiles by itself calls per tile, as its family adapter names it):
the first run records the tiles it asks for and answers placeholders of the decoded size, then every GPU decodes its
share of them, and the second run is answered tile by tile with the decoded pixels. The tiles, their order and the
blending are ComfyUI's own, so the image equals its tiled decode with the same tile settings.
"""
import contextlib
import logging

from .. import patches

log = logging.getLogger(__name__)


def decode_tile(first_stage_model, method, tile, device):
    """One tile decoded by the VAE model's tile decoder ``method`` on ``device`` (the tile comes as the decoder
    received it on rank 0: already in the VAE's dtype)."""
    return getattr(first_stage_model, method)(tile.to(device))


def build_vae(state_dict, dtype, device):
    """A helper's copy of rank 0's VAE, built by ComfyUI from the same weights, on ``device`` in ``dtype``."""
    import comfy.sd
    vae = comfy.sd.VAE(sd=state_dict, device=device, dtype=dtype)
    vae.first_stage_model.to(device=device, dtype=dtype)
    return vae


def tile_decoder(vae):
    """(the VAE model's method that decodes one tile, why there is none)."""
    if not getattr(vae, "handles_tiling", False):
        return "decode", None   # ComfyUI's tiling calls the model's decode once per tile
    method = patches.vae_tile_decoder(vae.first_stage_model)
    if method is None:
        return None, (f"{type(vae.first_stage_model).__name__} tiles inside its own decode, where no hook reaches "
                      "its tiles")
    return method, None


@contextlib.contextmanager
def _tiles_answered_by(model, method, answer):
    """``model.<method>`` answered by ``answer(tile)`` for the duration (an instance attribute over the class's
    method, removed afterwards)."""
    setattr(model, method, lambda tile, *args, **kwargs: answer(tile))
    try:
        yield
    finally:
        delattr(model, method)


def _decoded_shape(vae, tile):
    """The shape ComfyUI's tiling expects for a decoded ``tile`` (the VAE's upscale ratio per dimension)."""
    sizes = tile.shape[2:]
    ratios = vae.upscale_ratio if isinstance(vae.upscale_ratio, (tuple, list)) else [vae.upscale_ratio] * len(sizes)
    return (tile.shape[0], vae.output_channels) + tuple(
        round(ratio(size) if callable(ratio) else ratio * size) for ratio, size in zip(ratios, sizes))


def decode(vae, run):
    """``run()`` (ComfyUI's tiled decode of ``vae``) spread over the running helpers' GPUs; on one GPU, with the
    reason in the log, where there are none or no tile can be reached, and after a helper fails."""
    from . import helper_group
    group = helper_group.current_group()
    method, reason = tile_decoder(vae)
    if reason is None and (group is None or not group.alive()):
        reason = "no helper GPUs are running (they start with a model that went through Enable Multi-GPU)"
    if reason is not None:
        log.info("Enable Multi-GPU: the tiled decode runs on one GPU because %s", reason)
        return run()
    import comfy.model_management
    try:
        return spread_decode(group, vae, method, run)
    except comfy.model_management.InterruptProcessingException:
        helper_group.shutdown_group("cancelled in the middle of a spread decode", graceful=False)
        raise
    except Exception as e:   # a helper failed or a transfer broke: the helpers may be mid-way, so they end
        log.error("Enable Multi-GPU: the spread decode failed (%s: %s); stopping the helpers and decoding on one GPU",
                  type(e).__name__, e)
        helper_group.shutdown_group("a spread decode failed", graceful=False)
        return run()


def spread_decode(group, vae, method, run):
    """``run()`` with the tiles of ``vae.first_stage_model.<method>`` decoded on every GPU of ``group``. Where the
    decoded size of a tile is not ComfyUI's upscale ratio of it (a VAE tiling by itself), rank 0 decodes the first
    tile of each shape while recording (its share), and the others of that shape get placeholders of its size."""
    model = vae.first_stage_model
    tiles, decoded, shapes = [], {}, {}

    def record(tile):
        tiles.append(tile.contiguous())
        if method == "decode":
            return tile.new_zeros(_decoded_shape(vae, tile))
        key = (tuple(tile.shape), tile.dtype)
        if key not in shapes:   # the class's method: the instance's is this hook
            decoded[len(tiles) - 1] = result = getattr(type(model), method)(model, tile)
            shapes[key] = result
            return result
        return shapes[key].new_zeros(shapes[key].shape)

    with _tiles_answered_by(model, method, record):
        run()
    if len(tiles) < 2:
        log.info("Enable Multi-GPU: the decode is one tile; it runs on one GPU")
        return run()
    answers = iter(group.decode_tiles(vae, method, tiles, decoded))
    with _tiles_answered_by(model, method, lambda tile: next(answers)):
        return run()
