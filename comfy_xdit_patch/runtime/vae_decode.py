"""ComfyUI's tiled VAE decode with its tiles spread over the helper GPUs.

ComfyUI's own tiled decode runs twice on rank 0 with the VAE model's tile decoder hooked (``decode``, which ComfyUI's
tiling calls once per tile, or the method a VAE that tiles by itself calls per tile, as its family adapter names it):
the first run records the tiles it asks for and answers placeholders of the decoded size (for a VAE that tiles by
itself, rank 0 decodes the first tile of each shape to learn that size), then every GPU decodes its share of the
rest, and the second run is answered tile by tile with the decoded pixels. The tiles, their order and the blending are
ComfyUI's own, so the image equals its tiled decode with the same tile settings. Without helpers, for a VAE the
helpers cannot rebuild from its weights, and after a failure in the exchange, the decode runs on one GPU as ComfyUI's.
"""
import contextlib
import logging
import weakref

from .. import patches

log = logging.getLogger(__name__)

_not_spreadable = weakref.WeakKeyDictionary()   # VAE model -> why the helpers could not rebuild it


class NotSpreadable(Exception):
    """The helpers cannot decode this VAE's tiles (they replied so); they stay in step."""


def decode_tile(first_stage_model, method, tile, device):
    """One tile decoded by the VAE model's tile decoder ``method`` on ``device`` (the tile comes as the decoder
    received it on rank 0: already in the VAE's dtype)."""
    return getattr(first_stage_model, method)(tile.to(device))


def qualified_name(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def build_vae(state_dict, dtype, device):
    """A helper's copy of rank 0's VAE, built by ComfyUI from the same weights, on ``device`` in ``dtype``."""
    import comfy.sd
    vae = comfy.sd.VAE(sd=state_dict, device=device, dtype=dtype)
    vae.first_stage_model.to(device=device, dtype=dtype)
    return vae


def rebuilt_differently(vae, model_class, keys, tensor_layout):
    """Why a helper's rebuilt ``vae`` is not rank 0's model (``model_class``, its state dict's keys and shapes), or
    None: ComfyUI detects a VAE from its weights, and some VAEs need more than their weights to be rebuilt."""
    model = getattr(vae, "first_stage_model", None)
    if model is None or qualified_name(model) != model_class:
        return f"the weights were rebuilt as {qualified_name(model) if model is not None else 'nothing'}"
    state = model.state_dict()
    if list(state) != list(keys) or any(tuple(state[k].shape) != tuple(shape)
                                        for k, (shape, _) in zip(keys, tensor_layout)):
        return "the rebuilt model's weights differ in names or shapes"
    return None


def tile_decoder(vae):
    """(the VAE model's method that decodes one tile, why its tiles cannot be decoded on other GPUs)."""
    model = vae.first_stage_model
    name = type(model).__name__
    method, reason = patches.vae_tile_decoder(model)
    reason = reason or _not_spreadable.get(model)
    if reason is not None:
        return None, f"{name}: {reason}"
    if not getattr(vae, "handles_tiling", False):
        return "decode", None   # ComfyUI's tiling calls the model's decode once per tile
    if method is None:
        return None, f"{name} tiles inside its own decode, where no hook reaches its tiles"
    return method, None


@contextlib.contextmanager
def _tiles_answered_by(model, method, answer):
    """``model.<method>`` answered by ``answer(tile)`` for the duration (an instance attribute over the class's
    method; one already there is put back afterwards)."""
    missing = object()
    previous = model.__dict__.get(method, missing)
    setattr(model, method, lambda tile, *args, **kwargs: answer(tile))
    try:
        yield
    finally:
        if previous is missing:
            delattr(model, method)
        else:
            setattr(model, method, previous)


def _decoded_shape(vae, tile):
    """The shape ComfyUI's tiling expects for a decoded ``tile`` (the VAE's upscale ratio per dimension)."""
    sizes = tile.shape[2:]
    ratios = vae.upscale_ratio if isinstance(vae.upscale_ratio, (tuple, list)) else [vae.upscale_ratio] * len(sizes)
    return (tile.shape[0], vae.output_channels) + tuple(
        round(ratio(size) if callable(ratio) else ratio * size) for ratio, size in zip(ratios, sizes))


def decode(vae, run):
    """``run()`` (ComfyUI's tiled decode of ``vae``) spread over the running helpers' GPUs; on one GPU, with the
    reason in the log, where there are none or the tiles cannot go to them, and after a helper fails."""
    from . import helper_group
    group = helper_group.current_group()
    method, reason = tile_decoder(vae)
    if reason is None and (group is None or not group.alive()):
        reason = "no helper GPUs are running (they start with a model that went through Enable Multi-GPU)"
    if reason is not None:
        log.info("Enable Multi-GPU: the tiled decode runs on one GPU because %s", reason)
        return run()
    return spread_decode(group, vae, method, run)


def spread_decode(group, vae, method, run):
    """``run()`` with the tiles of ``vae.first_stage_model.<method>`` decoded on every GPU of ``group``. Where the
    decoded size of a tile is not ComfyUI's upscale ratio of it (a VAE tiling by itself), rank 0 decodes the first
    tile of each shape while recording (its share), and the others of that shape get placeholders of its size."""
    import comfy.model_management
    from . import helper_group
    model = vae.first_stage_model
    tiles, decoded, shapes = [], {}, {}
    keep_on = vae.output_device   # where ComfyUI's tiling keeps decoded tiles: the whole video never sits in VRAM

    def record(tile):
        tiles.append(tile.contiguous())
        if method == "decode":
            return tile.new_zeros(_decoded_shape(vae, tile))
        key = (tuple(tile.shape), tile.dtype)
        if key not in shapes:   # the class's method: the instance's is this hook
            result = getattr(type(model), method)(model, tile)
            decoded[len(tiles) - 1] = result.to(keep_on, copy=True)   # ComfyUI may write into what it is given
            shapes[key] = (result.shape, result.dtype)
            return result
        shape, dtype = shapes[key]
        return tile.new_zeros(shape, dtype=dtype)

    with _tiles_answered_by(model, method, record):
        run()   # fails as the core node's decode would
    if len(tiles) < 2:
        log.info("Enable Multi-GPU: the decode is one tile; it runs on one GPU")
        return run()
    try:
        results = group.decode_tiles(vae, method, tiles, decoded, keep_on)
    except comfy.model_management.InterruptProcessingException:
        helper_group.shutdown_group("cancelled in the middle of a spread decode", graceful=False)
        raise
    except NotSpreadable as e:
        _not_spreadable[model] = str(e)
        log.warning("Enable Multi-GPU: the tiled decode runs on one GPU because the helpers cannot rebuild %s (%s)",
                    type(model).__name__, e)
        return run()
    except Exception as e:   # a helper failed or a transfer broke: the helpers may be mid-way, so they end
        log.error("Enable Multi-GPU: the spread decode failed (%s: %s); stopping the helpers and decoding on one GPU",
                  type(e).__name__, e)
        helper_group.shutdown_group("a spread decode failed", graceful=False)
        return run()
    answers = iter(zip(tiles, results))

    def answer(tile):
        recorded, result = next(answers, (None, None))
        if recorded is None or recorded.shape != tile.shape:
            raise RuntimeError("ComfyUI's tiled decode asked for other tiles the second time")
        # ComfyUI's tiling takes a tile where it keeps them; a VAE tiling by itself blends on its own device.
        return result if method == "decode" else result.to(tile.device)

    with _tiles_answered_by(model, method, answer):
        return run()
