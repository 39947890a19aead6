"""Drop-in replacements for ComfyUI's loaders and KSampler: the same inputs and outputs plus the multi-GPU options.

Each one takes its inputs from the core node's own INPUT_TYPES at definition time (as ComfyUI-GGUF's loaders do), so
it stays in step with the ComfyUI it runs in, and calls the core node to do the work: no second implementation.
- XDiTUNetLoader, XDiTCheckpointLoader: the loaded MODEL comes out with Enable Multi-GPU applied.
- XDiTKSampler: KSampler on the model with Enable Multi-GPU applied.
- XDiTVAEDecodeTiled: VAEDecodeTiled with its tiles decoded on every GPU of the running helpers, blended by ComfyUI
  as in its own tiled decode (runtime/vae_decode.py).
- XDiTVAELoader, XDiTCLIPLoader, XDiTDualCLIPLoader: the loaded VAE / text encoders go to the chosen device (e.g. a
  helper GPU, so that rank 0 keeps its memory for the diffusion model), through ComfyUI's own Select*Device nodes.
"""
import comfy.model_management
import nodes
from comfy_api.latest import io

from .node_options import apply_multigpu, multigpu_inputs, split_multigpu

_TYPED = {"MODEL": io.Model, "CLIP": io.Clip, "VAE": io.Vae, "CONDITIONING": io.Conditioning, "LATENT": io.Latent,
          "IMAGE": io.Image}


def v3_inputs(v1_class, drop=()):
    """The inputs of a V1 node class (INPUT_TYPES) as V3 inputs."""
    inputs = []
    for section, spec in v1_class.INPUT_TYPES().items():
        if section not in ("required", "optional"):
            continue
        optional = section == "optional"
        for name, entry in spec.items():
            if name in drop:
                continue
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            common = dict(optional=optional, tooltip=options.get("tooltip"))
            if isinstance(kind, list):
                inputs.append(io.Combo.Input(name, options=kind, default=options.get("default"), **common))
            elif kind == "INT":
                inputs.append(io.Int.Input(name, default=options.get("default"), min=options.get("min"),
                                           max=options.get("max"), step=options.get("step"),
                                           control_after_generate=options.get("control_after_generate"), **common))
            elif kind == "FLOAT":
                inputs.append(io.Float.Input(name, default=options.get("default"), min=options.get("min"),
                                             max=options.get("max"), step=options.get("step"),
                                             round=options.get("round"), **common))
            elif kind == "BOOLEAN":
                inputs.append(io.Boolean.Input(name, default=options.get("default"), **common))
            elif kind == "STRING":
                inputs.append(io.String.Input(name, default=options.get("default"),
                                              multiline=options.get("multiline", False), **common))
            else:
                inputs.append(_TYPED.get(kind, io.Custom(kind)).Input(name, **common))
    return inputs


def v3_outputs(v1_class):
    names = getattr(v1_class, "RETURN_NAMES", None) or v1_class.RETURN_TYPES
    return [_TYPED.get(kind, io.Custom(kind)).Output(display_name=name)
            for kind, name in zip(v1_class.RETURN_TYPES, names)]


def _schema(node_id, display_name, core, description, extra_inputs, drop=()):
    return io.Schema(node_id=node_id, display_name=display_name, category="advanced/multigpu",
                     description=description, inputs=v3_inputs(core, drop) + extra_inputs, outputs=v3_outputs(core))


class XDiTUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("XDiTUNetLoader", "Load Diffusion Model (Multi-GPU)", nodes.UNETLoader,
                       "UNETLoader with Enable Multi-GPU applied to the loaded model.", multigpu_inputs(optional=True))

    @classmethod
    def execute(cls, **kwargs):
        core_args, options = split_multigpu(kwargs)
        model = nodes.UNETLoader().load_unet(**core_args)[0]
        return io.NodeOutput(apply_multigpu(model, **options))


class XDiTCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("XDiTCheckpointLoader", "Load Checkpoint (Multi-GPU)", nodes.CheckpointLoaderSimple,
                       "CheckpointLoaderSimple with Enable Multi-GPU applied to the MODEL; CLIP and VAE unchanged.",
                       multigpu_inputs(optional=True))

    @classmethod
    def execute(cls, **kwargs):
        core_args, options = split_multigpu(kwargs)
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(**core_args)[:3]
        return io.NodeOutput(apply_multigpu(model, **options), clip, vae)


class XDiTKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("XDiTKSampler", "KSampler (Multi-GPU)", nodes.KSampler,
                       "KSampler that samples its model with Enable Multi-GPU.", multigpu_inputs(optional=True))

    @classmethod
    def execute(cls, **kwargs):
        core_args, options = split_multigpu(kwargs)
        core_args["model"] = apply_multigpu(core_args["model"], **options)
        return io.NodeOutput(*nodes.KSampler().sample(**core_args))


class XDiTVAEDecodeTiled(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("XDiTVAEDecodeTiled", "VAE Decode (Tiled, Multi-GPU)", nodes.VAEDecodeTiled,
                       "VAE Decode (Tiled) with its tiles decoded on every GPU of the running Enable Multi-GPU "
                       "helpers: the image equals the core node's with the same tile settings.", [])

    @classmethod
    def execute(cls, vae, **core_args):
        from .runtime import vae_decode
        return io.NodeOutput(vae_decode.decode(vae, lambda: nodes.VAEDecodeTiled().decode(vae, **core_args)[0]))


def _device_input(options):
    """The device choice, its tooltip naming exactly what the list offers: ComfyUI offers "cpu" for text encoders but
    not for the VAE (its Select VAE Device passes a VAE asked for the CPU through unchanged)."""
    choices = "default, cpu, or gpu:N" if "cpu" in options else "default or gpu:N"
    return io.Combo.Input("device", options=options, default="default", optional=True,
                          tooltip=f"Where this model runs: {choices} (gpu:N listed when there are several GPUs; e.g. "
                                  "a helper GPU, so that the diffusion model keeps GPU 0's memory).")


class XDiTVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("XDiTVAELoader", "Load VAE (Multi-GPU)", nodes.VAELoader,
                       "VAELoader that puts the VAE on the chosen GPU.",
                       [_device_input(comfy.model_management.get_gpu_device_options_no_cpu())])

    @classmethod
    def execute(cls, device="default", **core_args):
        from comfy_extras.nodes_multigpu import SelectVAEDeviceNode
        vae = nodes.VAELoader().load_vae(**core_args)[0]
        if device != "default":
            vae = SelectVAEDeviceNode.execute(vae, device).result[0]
        return io.NodeOutput(vae)


def _clip_on_device(load_clip, device, core_args):
    """The core loader takes 'cpu' itself; a GPU goes through ComfyUI's Select CLIP Device."""
    from comfy_extras.nodes_multigpu import SelectCLIPDeviceNode
    clip = load_clip(**core_args, device="cpu" if device == "cpu" else "default")[0]
    return clip if device in ("default", "cpu") else SelectCLIPDeviceNode.execute(clip, device).result[0]


class XDiTCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("XDiTCLIPLoader", "Load CLIP (Multi-GPU)", nodes.CLIPLoader,
                       "CLIPLoader that puts the text encoder on the chosen device.",
                       [_device_input(comfy.model_management.get_gpu_device_options())], drop=("device",))

    @classmethod
    def execute(cls, device="default", **core_args):
        return io.NodeOutput(_clip_on_device(nodes.CLIPLoader().load_clip, device, core_args))


class XDiTDualCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _schema("XDiTDualCLIPLoader", "DualCLIPLoader (Multi-GPU)", nodes.DualCLIPLoader,
                       "DualCLIPLoader that puts the text encoders on the chosen device.",
                       [_device_input(comfy.model_management.get_gpu_device_options())], drop=("device",))

    @classmethod
    def execute(cls, device="default", **core_args):
        return io.NodeOutput(_clip_on_device(nodes.DualCLIPLoader().load_clip, device, core_args))


DROP_IN_NODES = [XDiTUNetLoader, XDiTCheckpointLoader, XDiTKSampler, XDiTVAEDecodeTiled, XDiTVAELoader,
                 XDiTCLIPLoader, XDiTDualCLIPLoader]
