"""Drop-in XDiT* nodes: the native node's inputs and outputs plus the multi-GPU options, and the native result."""
import nodes
import torch

from comfy_env import empty_latent, flux_conditioning, ksample, relative_error
from comfy_xdit_patch.dropin import (XDiTCheckpointLoader, XDiTCLIPLoader, XDiTDualCLIPLoader, XDiTKSampler,
                                     XDiTUNetLoader, XDiTVAEDecodeTiled, XDiTVAELoader)
from comfy_xdit_patch.runtime import helper_group as helpers

MULTIGPU = {"enabled": True, "gpus": 2, "parallelism": "ring"}


def input_names(node):
    return [i.id for i in node.GET_SCHEMA().inputs]


def v1_names(core):
    types = core.INPUT_TYPES()
    return list(types["required"]) + list(types.get("optional", {}))


def test_every_drop_in_keeps_the_native_inputs_and_outputs(model_files):
    for node, core in [(XDiTUNetLoader, nodes.UNETLoader), (XDiTCheckpointLoader, nodes.CheckpointLoaderSimple),
                       (XDiTKSampler, nodes.KSampler), (XDiTVAEDecodeTiled, nodes.VAEDecodeTiled),
                       (XDiTVAELoader, nodes.VAELoader),
                       (XDiTCLIPLoader, nodes.CLIPLoader), (XDiTDualCLIPLoader, nodes.DualCLIPLoader)]:
        names = input_names(node)
        assert names[:len(v1_names(core)) - ("device" in v1_names(core))] == \
            [n for n in v1_names(core) if n != "device"], node
        outputs = [o.io_type for o in node.GET_SCHEMA().outputs]
        assert outputs == list(core.RETURN_TYPES), node


def test_unet_loader_and_ksampler_equal_the_native_workflow(model_files):
    native = ksample(nodes.UNETLoader().load_unet("tiny_flux.safetensors", "default")[0])
    model = XDiTUNetLoader.execute(unet_name="tiny_flux.safetensors", weight_dtype="default", **MULTIGPU).result[0]
    assert relative_error(ksample(model), native) <= 1e-5
    assert helpers.current_group() is not None

    plain = XDiTUNetLoader.execute(unet_name="tiny_flux.safetensors", weight_dtype="default", enabled=False).result[0]
    latent = XDiTKSampler.execute(model=plain, seed=42, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                                  positive=flux_conditioning(77, seed=1), negative=flux_conditioning(77, seed=2),
                                  latent_image=empty_latent(18, 14), denoise=1.0, **MULTIGPU).result[0]
    assert relative_error(latent["samples"], native) <= 1e-5


def test_checkpoint_loader_equals_the_native_one(model_files):
    n_model, n_clip, n_vae = nodes.CheckpointLoaderSimple().load_checkpoint("tiny_flux_checkpoint.safetensors")[:3]
    model, clip, vae = XDiTCheckpointLoader.execute(ckpt_name="tiny_flux_checkpoint.safetensors", **MULTIGPU).result
    assert relative_error(ksample(model), ksample(n_model)) <= 1e-5
    # The CLIP and VAE outputs are the native loader's own objects (this checkpoint carries neither).
    assert (clip is None) == (n_clip is None) and type(vae) is type(n_vae)


def test_vae_loader_equals_the_native_one(model_files):
    latent = {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))}
    native = nodes.VAEDecode().decode(nodes.VAELoader().load_vae("tiny_vae.safetensors")[0], latent)[0]
    ours = XDiTVAELoader.execute(vae_name="tiny_vae.safetensors", device="default").result[0]
    assert torch.equal(nodes.VAEDecode().decode(ours, latent)[0], native)


def test_clip_loaders_equal_the_native_ones_on_any_device(model_files):
    def encode(clip):
        return nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0][0][0]
    native = encode(nodes.CLIPLoader().load_clip("tiny_clip_l.safetensors", "stable_diffusion")[0])
    for device in ("default", "cpu"):
        ours = XDiTCLIPLoader.execute(clip_name="tiny_clip_l.safetensors", type="stable_diffusion",
                                      device=device).result[0]
        assert torch.equal(encode(ours), native), device
    # sd3 takes any subset of clip-l / clip-g / t5: two CLIP-L files load fully (no uninitialised encoder).
    native_dual = encode(nodes.DualCLIPLoader().load_clip("tiny_clip_l.safetensors", "tiny_clip_l.safetensors",
                                                          "sd3")[0])
    ours_dual = XDiTDualCLIPLoader.execute(clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_clip_l.safetensors",
                                           type="sd3", device="cpu").result[0]
    assert torch.equal(encode(ours_dual), native_dual)


def test_device_lists_and_tooltips_agree():
    """Each loader offers the devices ComfyUI's own Select*Device node honours and its tooltip names exactly those:
    the VAE no 'cpu' (ComfyUI passes a VAE asked for the CPU through unchanged), the text encoders 'cpu' too."""
    import comfy.model_management
    for node, options in [(XDiTVAELoader, comfy.model_management.get_gpu_device_options_no_cpu()),
                          (XDiTCLIPLoader, comfy.model_management.get_gpu_device_options()),
                          (XDiTDualCLIPLoader, comfy.model_management.get_gpu_device_options())]:
        device = next(i for i in node.GET_SCHEMA().inputs if i.id == "device")
        assert device.options == options and device.default == "default", node
        named = device.tooltip.split(":", 1)[1].split("(")[0].replace(" or ", ",").split(",")
        named = {choice.strip() for choice in named if choice.strip()}
        assert named == {"default", "gpu:N"} | ({"cpu"} if "cpu" in options else set()), (node, device.tooltip)
        assert all(o in named or o.startswith("gpu:") for o in options), node


def test_vae_loader_runs_on_every_device_it_offers(model_files):
    latent = {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))}
    native = nodes.VAEDecode().decode(nodes.VAELoader().load_vae("tiny_vae.safetensors")[0], latent)[0]
    device = next(i for i in XDiTVAELoader.GET_SCHEMA().inputs if i.id == "device")
    for option in device.options:
        ours = XDiTVAELoader.execute(vae_name="tiny_vae.safetensors", device=option).result[0]
        assert torch.equal(nodes.VAEDecode().decode(ours, latent)[0], native), option
