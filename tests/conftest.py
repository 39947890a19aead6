import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import comfy_env  # noqa: E402

comfy_env.setup_comfy()


@pytest.fixture(scope="session")
def tiny_flux():
    """A 4-head FLUX.1-dev-shaped model (random weights) loaded by ComfyUI's own loader."""
    return comfy_env.load_tiny_flux()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """Tiny FLUX, two LoRAs and a FLUX ControlNet as files in ComfyUI's model folders (loaded by its own nodes)."""
    root = tmp_path_factory.mktemp("models")
    comfy_env.write_model_files(str(root))
    return root


@pytest.fixture(scope="session")
def unet(model_files):
    """The tiny FLUX loaded by ComfyUI's UNETLoader node from its file."""
    import nodes
    return nodes.UNETLoader().load_unet("tiny_flux.safetensors", "default")[0]


@pytest.fixture(scope="session", autouse=True)
def stop_helpers_at_end():
    yield
    from comfy_xdit_patch.runtime import helper_group
    helper_group.shutdown_group()
