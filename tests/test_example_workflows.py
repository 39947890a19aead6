"""What ComfyUI reads from this plugin's folder besides its nodes: the example workflows its template browser lists
(example_workflows/*.json) and the Comfy Registry metadata (pyproject's [tool.comfy], LICENSE).

Each example workflow, in the UI's format, is checked against the real ComfyUI's node definitions, then converted to
the API prompt format as the frontend does and run by ComfyUI's PromptExecutor on the CPU with tiny models, with
Enable Multi-GPU on 2 CPU ranks and with it disabled: the two images agree within the fp32 exactness rule (1e-5).

For the runs the model file names become tiny random-weight models, the image gets small and the steps 2. FLUX's T5-XXL
has a fixed 4.7 B-parameter size in ComfyUI, so DualCLIPLoader (CLIP-L + T5-XXL) becomes CLIPLoader with a random
CLIP-L at its real size, and the tiny FLUX and ControlNet take CLIP-L's 768-wide text instead of T5's 4096: the
prompts still go through the real CLIPTextEncode. FluxKontextImageScale is bypassed (as in the UI, mode 4): it scales
every image to about one megapixel, too large for a CPU run.
"""
import asyncio
import glob
import json
import logging
import os

import pytest

import comfy_env
from comfy_env import REPO, relative_error, tiny_flux_state_dict

WORKFLOW_DIR = os.path.join(REPO, "example_workflows")
WORKFLOWS = ["flux_dev_lora_controlnet_multigpu.json", "flux_dev_text_to_image_multigpu.json",
             "flux_kontext_edit_multigpu.json"]

# UI node modes: 0 always, 2 never (muted), 4 bypass.
MUTED, BYPASS = 2, 4
CONTROL, UPLOAD = "<control_after_generate>", "<upload>"   # widgets the frontend adds, absent from the prompt
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MODEL_INPUTS = {("UNETLoader", "unet_name"): "diffusion_models", ("DualCLIPLoader", "clip_name1"): "text_encoders",
                ("DualCLIPLoader", "clip_name2"): "text_encoders", ("CLIPLoader", "clip_name"): "text_encoders",
                ("VAELoader", "vae_name"): "vae", ("LoraLoaderModelOnly", "lora_name"): "loras",
                ("ControlNetLoader", "control_net_name"): "controlnet"}
EXAMPLE_IMAGE = "example.png"   # ComfyUI's own input/example.png in a stock install; a small one for these runs
BYPASSED_IN_RUNS = {"FluxKontextImageScale"}
RUN_SIZE = {"width": 112, "height": 144}


def load(name):
    with open(os.path.join(WORKFLOW_DIR, name)) as f:
        return json.load(f)


def input_specs(class_type):
    """The node's inputs, required then optional, in ComfyUI's order: name -> (kind, options, optional)."""
    import nodes
    info = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    return {name: (spec[0], spec[1] if len(spec) > 1 else {}, section == "optional")
            for section in ("required", "optional") for name, spec in info.get(section, {}).items()}


def is_widget(kind, options):
    return (isinstance(kind, list) or kind in WIDGET_KINDS) and not options.get("forceInput")


def widget_slots(class_type):
    """The widgets' names in the order of a UI node's widgets_values, with the values the frontend adds itself: a
    seed's control_after_generate and an image loader's upload button."""
    slots = []
    for name, (kind, options, _) in input_specs(class_type).items():
        if not is_widget(kind, options):
            continue
        slots.append(name)
        if kind == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
            slots.append(CONTROL)
        if options.get("image_upload"):
            slots.append(UPLOAD)
    return slots


def to_api_prompt(workflow):
    """The UI workflow as the API prompt the frontend queues: widget values by name, links as [node id, slot]; muted
    nodes left out and bypassed ones bridged (a link from one takes its input of the same type)."""
    nodes_by_id = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id):
        _, origin, slot, _, _, kind = links[link_id]
        while nodes_by_id[origin]["mode"] == BYPASS:
            passed = [i for i in nodes_by_id[origin]["inputs"] if i["type"] == kind and i.get("link") is not None]
            assert passed, f"bypassed node {origin} has no {kind} input to pass on"
            _, origin, slot, _, _, _ = links[passed[0]["link"]]
        return [str(origin), slot]

    prompt = {}
    for node in workflow["nodes"]:
        if node["mode"] in (MUTED, BYPASS):
            continue
        inputs = {name: value for name, value in zip(widget_slots(node["type"]), node.get("widgets_values", []))
                  if name not in (CONTROL, UPLOAD)}
        for entry in node["inputs"]:
            if entry.get("link") is not None:
                inputs[entry["name"]] = source(entry["link"])
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def write_example_image(path, width=80, height=96):
    """A small picture with edges for Canny and colour for the VAE."""
    import numpy as np
    from PIL import Image
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 7.0)], axis=-1) * 200
    pixels[30:70, 20:60] = (230, 40, 40)
    pixels[10:25, 50:75] = (30, 30, 220)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def comfy_nodes(tmp_path_factory):
    """ComfyUI's node set after init_extra_nodes plus this plugin, with an input folder holding example.png and an
    output folder of its own (both restored afterwards)."""
    import folder_paths
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    assert asyncio.run(nodes.load_custom_node(REPO)), "the plugin did not load as a custom node"
    root = tmp_path_factory.mktemp("example_workflows")
    os.makedirs(root / "input")
    write_example_image(str(root / "input" / EXAMPLE_IMAGE))
    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_output_directory(str(root / "output"))
    yield nodes.NODE_CLASS_MAPPINGS
    folder_paths.set_input_directory(saved[0])
    folder_paths.set_output_directory(saved[1])


def test_the_example_workflows_are_the_three_documented():
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(WORKFLOW_DIR, "*.json"))) == WORKFLOWS


def check_widget_value(node, name, spec, value):
    kind, options, _ = spec
    where = f"{node['type']} #{node['id']} {name}={value!r}"
    if isinstance(kind, list) or kind == "COMBO":
        if (node["type"], name) in MODEL_INPUTS:
            # A model file the user downloads: named, with its folder, in the node's models list (the frontend
            # offers the download from there).
            listed = {m["name"]: m for m in node["properties"].get("models", [])}
            assert value.endswith(".safetensors") and value in listed, where
            assert listed[value]["directory"] == MODEL_INPUTS[(node["type"], name)], where
            assert listed[value]["url"].startswith("https://huggingface.co/"), where
        else:
            assert value in (kind if isinstance(kind, list) else options["options"]), where
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert options.get("min", value) <= value <= options.get("max", value), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert options.get("min", value) <= value <= options.get("max", value), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    else:
        assert isinstance(value, str) and value, where


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_matches_comfyui_node_definitions(comfy_nodes, name):
    workflow = load(name)
    nodes_by_id = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes_by_id) == len(workflow["nodes"]) and workflow["links"]
    for node in workflow["nodes"]:
        assert node["type"] in comfy_nodes, f"{node['type']} is no ComfyUI node"
        assert node["mode"] == 0, node["type"]
        specs = input_specs(node["type"])
        slots = widget_slots(node["type"])
        values = node.get("widgets_values", [])
        assert len(values) == len(slots), (node["type"], slots, values)
        for slot, value in zip(slots, values):
            if slot == CONTROL:
                assert value in CONTROL_VALUES, (node["type"], value)
            elif slot == UPLOAD:
                assert value == "image", (node["type"], value)
            else:
                check_widget_value(node, slot, specs[slot], value)
        sockets = {n: spec for n, spec in specs.items() if not is_widget(spec[0], spec[1])}
        assert [entry["name"] for entry in node["inputs"]] == list(sockets), node["type"]
        for entry in node["inputs"]:
            assert entry["type"] == sockets[entry["name"]][0], (node["type"], entry)
            assert entry.get("link") is not None or sockets[entry["name"]][2], \
                f"{node['type']} #{node['id']}: required input {entry['name']} is not connected"
        assert [o["type"] for o in node["outputs"]] == list(comfy_nodes[node["type"]].RETURN_TYPES), node["type"]
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        output = nodes_by_id[origin]["outputs"][origin_slot]
        entry = nodes_by_id[target]["inputs"][target_slot]
        assert output["type"] == kind == entry["type"], (link_id, output, entry)
        assert link_id in output["links"] and entry["link"] == link_id, link_id
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    assert workflow["last_node_id"] == max(nodes_by_id)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_enable_multigpu_sits_on_the_model_line_right_before_the_sampler(comfy_nodes, name):
    workflow = load(name)
    nodes_by_id = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    multi = [node for node in workflow["nodes"] if node["type"] == "EnableMultiGPU"]
    assert len(multi) == 1
    multi = multi[0]
    # Its MODEL goes to the sampler's model input and nowhere else.
    targets = [(nodes_by_id[links[i][3]]["type"], nodes_by_id[links[i][3]]["inputs"][links[i][4]]["name"])
               for i in multi["outputs"][0]["links"]]
    assert targets == [("KSampler", "model")]
    # Its model comes from the last node that changes the model, which feeds nothing else.
    origin = nodes_by_id[links[multi["inputs"][0]["link"]][1]]
    assert origin["type"] in ("UNETLoader", "LoraLoaderModelOnly")
    assert origin["outputs"][0]["links"] == [multi["inputs"][0]["link"]]
    assert dict(zip(widget_slots("EnableMultiGPU"), multi["widgets_values"]))["enabled"] is True


def tiny_vae_with_encoder_state_dict(seed=31):
    """A FLUX-style VAE that also encodes (Kontext's reference image): ComfyUI builds the encoder at its full width
    (128), so it has random weights at that width, scaled to keep activations in range; the decoder is the narrow
    one of the other tests."""
    import torch
    from comfy.ldm.modules.diffusionmodules.model import Encoder
    from comfy_xdit_patch.bench import weight_shapes
    from comfy_xdit_patch.evidence import random_vae_state_dict
    with weight_shapes():
        encoder = Encoder(ch=128, out_ch=3, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[],
                          dropout=0.0, in_channels=3, resolution=256, z_channels=16, double_z=True)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in encoder.state_dict().items():
        if value.ndim > 1:
            state["encoder." + key] = torch.randn(value.shape, generator=generator) / value[0].numel() ** 0.5
        elif "norm" in key and key.endswith("weight"):
            state["encoder." + key] = torch.ones(value.shape)
        else:
            state["encoder." + key] = torch.zeros(value.shape)
    state.update(random_vae_state_dict())
    return state


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, model_files):
    """The workflows' model file names -> tiny models in ComfyUI's model folders."""
    import folder_paths
    import safetensors.torch
    root = tmp_path_factory.mktemp("example_workflow_models")
    files = {
        ("diffusion_models", "tiny_flux_clip_l_text.safetensors"): tiny_flux_state_dict(context_dim=768),
        ("controlnet", "tiny_flux_controlnet_clip_l_text.safetensors"): comfy_env.tiny_flux_controlnet_state_dict(context_dim=768, seed=21),
        ("vae", "tiny_vae_with_encoder.safetensors"): tiny_vae_with_encoder_state_dict(),
    }
    for (folder, file_name), state in files.items():
        os.makedirs(root / folder, exist_ok=True)
        safetensors.torch.save_file(state, str(root / folder / file_name))
        folder_paths.add_model_folder_path(folder, str(root / folder))
    return {"flux1-dev.safetensors": "tiny_flux_clip_l_text.safetensors",
            "flux1-dev-kontext_fp8_scaled.safetensors": "tiny_flux_clip_l_text.safetensors",
            "ae.safetensors": "tiny_vae_with_encoder.safetensors",
            "flux_realism_lora.safetensors": "tiny_lora_a.safetensors",
            "flux-canny-controlnet-v3.safetensors": "tiny_flux_controlnet_clip_l_text.safetensors"}


def tiny_prompt(workflow, files, enabled):
    for node in workflow["nodes"]:
        if node["type"] in BYPASSED_IN_RUNS:
            node["mode"] = BYPASS
    prompt = to_api_prompt(workflow)
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in files:
                inputs[key] = files[value]
        if node["class_type"] == "DualCLIPLoader":
            node["class_type"] = "CLIPLoader"
            node["inputs"] = {"clip_name": "tiny_clip_l.safetensors", "type": "stable_diffusion", "device": "default"}
        elif node["class_type"] == "EmptySD3LatentImage":
            inputs.update(RUN_SIZE)
        elif node["class_type"] == "KSampler":
            inputs["steps"] = 2
        elif node["class_type"] == "EnableMultiGPU":
            inputs.update(enabled=enabled, gpus=2)
    return prompt




@pytest.fixture(scope="module")
def executor(comfy_nodes):
    import execution
    server = comfy_env.FakeServer()
    return execution.PromptExecutor(server, cache_args={"ram": 0, "ram_inactive": 0}), server


def node_id(workflow, class_type):
    return str(next(node["id"] for node in workflow["nodes"] if node["type"] == class_type))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_on_two_cpu_ranks_equal_to_one(comfy_nodes, tiny_files, executor, name, caplog):
    import execution
    import folder_paths
    from comfy_xdit_patch.runtime import helper_group as helpers
    executor, server = executor
    workflow = load(name)
    sampler, decode, save, multi = (node_id(workflow, t) for t in ("KSampler", "VAEDecode", "SaveImage",
                                                                    "EnableMultiGPU"))
    helpers.shutdown_group()
    latents, images = {}, {}
    for enabled in (True, False):
        prompt = tiny_prompt(load(name), tiny_files, enabled)
        prompt_id = f"{name}-{enabled}"
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        assert valid, (error, node_errors)
        with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
            executor.execute(prompt, prompt_id, {}, outputs)
        assert executor.success, [m for m in server.messages if m[0] == "execution_error"]
        if enabled:
            group = helpers.current_group()
            model = asyncio.run(executor.caches.outputs.get(multi)).outputs[0][0]
            assert group is not None and group.plan.world_size == 2, "the helpers did not run"
            assert group.diffusion_model is model.model.diffusion_model, "the helpers never received this model"
            assert not [r.getMessage() for r in caplog.records if "one GPU" in r.getMessage()]
        saved = executor.history_result["outputs"][save]["images"]
        assert len(saved) == 1
        path = os.path.join(folder_paths.get_output_directory(), saved[0]["subfolder"], saved[0]["filename"])
        assert os.path.getsize(path) > 0, path
        latents[enabled] = asyncio.run(executor.caches.outputs.get(sampler)).outputs[0][0]["samples"]
        images[enabled] = asyncio.run(executor.caches.outputs.get(decode)).outputs[0][0]
    assert images[True].shape == images[False].shape and images[True].shape[0] == 1
    assert latents[True].isfinite().all() and latents[True].abs().sum() > 0
    # The sampled latent (the model's work) and the decoded image both agree.
    assert relative_error(latents[True], latents[False]) <= 1e-5
    assert relative_error(images[True], images[False]) <= 1e-5


def test_registry_metadata_as_comfyui_reads_it():
    """pyproject.toml through ComfyUI's own parser (comfy_config), the keys the Comfy Registry reads."""
    import comfyui_version
    from comfy_config import config_parser
    from packaging.specifiers import SpecifierSet
    config = config_parser.extract_node_configuration(REPO)
    repository = "https://github.com/comfy-xdit-patch/comfy-xdit-patch"
    assert config.project.urls.repository == repository
    assert config.project.urls.documentation.startswith(repository)
    assert config.project.urls.issues == repository + "/issues"
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name
    assert config.project.supported_comfyui_version == ">=0.33.0"
    assert comfyui_version.__version__ in SpecifierSet(config.project.supported_comfyui_version)
    raw = "https://raw.githubusercontent.com/comfy-xdit-patch/comfy-xdit-patch/main/"
    assert config.tool_comfy.icon.startswith(raw)
    assert os.path.isfile(os.path.join(REPO, config.tool_comfy.icon[len(raw):]))
    assert config.project.license.text == "Apache-2.0"
    with open(os.path.join(REPO, "LICENSE")) as f:
        assert "Apache License\n" in f.read(200)
