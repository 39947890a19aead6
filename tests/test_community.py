"""Community FLUX workflows under Enable Multi-GPU, built from ComfyUI's own nodes on tiny models: N ranks equal 1.

Each case samples the same graph twice, without and with the node, and compares the latents (fp32, ≤ 1e-5).
"""
import logging

import nodes
import pytest
import torch

from comfy_env import empty_latent, flux_conditioning, relative_error
from comfy_xdit_patch.multigpu import enable_multigpu
from comfy_xdit_patch.runtime import helper_group as helpers


def ksample(model, positive, negative, latent, steps=2, cfg=1.0, denoise=1.0, seed=42):
    return nodes.KSampler().sample(model, seed, steps, cfg, "euler", "simple", positive, negative, latent,
                                   denoise=denoise)[0]["samples"]


def assert_parallel_equal(model, gpus=2, parallelism="ring", options=None, **sample_args):
    expected = ksample(model, **sample_args)
    got = ksample(enable_multigpu(model, gpus=gpus, parallelism=parallelism, **(options or {})), **sample_args)
    group = helpers.current_group()
    assert group is not None and group.plan.world_size == gpus, "the helpers did not run"
    assert group.diffusion_model is model.model.diffusion_model, "the helpers never received this model"
    assert relative_error(got, expected) <= 1e-5
    return group


@pytest.fixture
def conds():
    return dict(positive=flux_conditioning(77, seed=1), negative=flux_conditioning(77, seed=2))


def with_loras(model, strength_a, strength_b):
    loader = nodes.LoraLoaderModelOnly()
    model = loader.load_lora_model_only(model, "tiny_lora_a.safetensors", strength_a)[0]
    return loader.load_lora_model_only(model, "tiny_lora_b.safetensors", strength_b)[0]


def test_two_loras_and_a_strength_change_between_prompts(unet, conds):
    latent = empty_latent(18, 14)
    group = assert_parallel_equal(with_loras(unet, 0.8, 0.5), positive=conds["positive"],
                                  negative=conds["negative"], latent=latent)
    syncs = group.weight_syncs
    assert_parallel_equal(with_loras(unet, 0.8, -0.7), positive=conds["positive"], negative=conds["negative"],
                          latent=latent)
    assert helpers.current_group() is group and group.weight_syncs == syncs + 1, "the new strength was not re-sent"


def controlnet_conds(conds, latent_hw, strength=0.9):
    control_net = nodes.ControlNetLoader().load_controlnet("tiny_flux_controlnet.safetensors")[0]
    hint = torch.rand(1, latent_hw[0] * 8, latent_hw[1] * 8, 3, generator=torch.Generator().manual_seed(4))
    positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        conds["positive"], conds["negative"], control_net, hint, strength, 0.0, 1.0)
    return positive, negative


def test_controlnet_residuals_are_sharded_like_the_image_tokens(unet, conds):
    positive, negative = controlnet_conds(conds, (18, 14))
    without = ksample(unet, conds["positive"], conds["negative"], empty_latent(18, 14))
    with_control = ksample(unet, positive, negative, empty_latent(18, 14))
    assert relative_error(with_control, without) > 1e-3, "the ControlNet must change the result"
    assert_parallel_equal(unet, positive=positive, negative=negative, latent=empty_latent(18, 14))


def kontext_conds(conds, reference_hw, seed=5):
    from comfy_extras.nodes_edit_model import ReferenceLatent
    reference = {"samples": torch.randn(1, 16, *reference_hw, generator=torch.Generator().manual_seed(seed))}
    return ReferenceLatent.execute(conds["positive"], reference).result[0]


def test_kontext_reference_latents_add_image_tokens(unet, conds):
    positive = kontext_conds(conds, (10, 12))     # 30 reference tokens beside 63 image tokens: 93, odd
    assert_parallel_equal(unet, positive=positive, negative=conds["negative"], latent=empty_latent(18, 14))


@pytest.mark.parametrize("method", ["offset", "index", "uxo/uno"])
def test_kontext_two_references_with_each_reference_method(unet, conds, method):
    """FluxKontextMultiReferenceLatentMethod changes where the reference tokens sit in position space; the tokens
    themselves shard with the image as for one reference."""
    from comfy_extras.nodes_edit_model import ReferenceLatent
    from comfy_extras.nodes_flux import FluxKontextMultiReferenceLatentMethod
    positive = kontext_conds(conds, (10, 12))
    second = {"samples": torch.randn(1, 16, 6, 8, generator=torch.Generator().manual_seed(11))}
    positive = ReferenceLatent.execute(positive, second).result[0]
    positive = FluxKontextMultiReferenceLatentMethod.execute(positive, method).result[0]
    assert_parallel_equal(unet, positive=positive, negative=conds["negative"], latent=empty_latent(18, 14))


def test_fresca_before_the_node(unet, conds):
    """FreSca filters the guidance in a pre-CFG function: that runs in the sampler on rank 0, outside the model."""
    from comfy_extras.nodes_fresca import FreSca
    filtered = FreSca.execute(unet, 1.0, 1.25, 3).result[0]
    assert_parallel_equal(filtered, positive=conds["positive"], negative=conds["negative"],
                          latent=empty_latent(16, 16), cfg=2.5)


def test_lora_loader_with_clip(unet, conds, model_files):
    """LoraLoader (model and CLIP) patches the model as LoraLoaderModelOnly does; the CLIP side stays on rank 0."""
    clip = nodes.CLIPLoader().load_clip("tiny_clip_l.safetensors", "stable_diffusion")[0]
    model, _ = nodes.LoraLoader().load_lora(unet, clip, "tiny_lora_a.safetensors", 0.8, 0.8)
    assert model.patches, "the LoRA must patch the model"
    assert_parallel_equal(model, positive=conds["positive"], negative=conds["negative"], latent=empty_latent(16, 16))


def test_img2img_batch_of_two_and_cfg(unet, conds):
    start = {"samples": torch.randn(2, 16, 16, 18, generator=torch.Generator().manual_seed(6))}
    assert_parallel_equal(unet, positive=conds["positive"], negative=conds["negative"], latent=start,
                          denoise=0.6, cfg=2.5)


def test_long_text_like_redux_context(unet):
    """Redux appends image tokens to the text: a 700-token context splits unevenly like any other."""
    assert_parallel_equal(unet, positive=flux_conditioning(701, seed=7), negative=flux_conditioning(77, seed=8),
                          latent=empty_latent(16, 16), cfg=2.0)


def test_lora_controlnet_and_kontext_together_on_usp_2x2(unet, conds):
    positive, negative = controlnet_conds(conds, (18, 14))
    positive = kontext_conds({"positive": positive}, (8, 8))
    assert_parallel_equal(with_loras(unet, 0.6, 0.9), gpus=4, parallelism="usp", positive=positive,
                          negative=negative, latent=empty_latent(18, 14))


def test_schnell_without_guidance_embedding(model_files):
    import comfy.sd
    from comfy_env import tiny_flux_state_dict
    schnell = comfy.sd.load_diffusion_model_state_dict(tiny_flux_state_dict(guidance=False))
    assert type(schnell.model).__name__ == "Flux" and not schnell.model.diffusion_model.params.guidance_embed
    assert_parallel_equal(schnell, positive=flux_conditioning(77, seed=1), negative=flux_conditioning(77, seed=2),
                          latent=empty_latent(16, 16))


def test_fp8_weights_from_unet_loader(model_files, conds):
    fp8 = nodes.UNETLoader().load_unet("tiny_flux.safetensors", "fp8_e4m3fn")[0]
    assert fp8.model.diffusion_model.img_in.weight.dtype == torch.float8_e4m3fn
    assert_parallel_equal(fp8, positive=conds["positive"], negative=conds["negative"], latent=empty_latent(16, 16))


def test_unknown_patch_inside_the_model_falls_back_to_one_gpu(unet, conds, caplog):
    patched = unet.clone()
    patched.set_model_attn1_output_patch(lambda attn, extra_options: attn * 0.9)
    expected = ksample(patched, conds["positive"], conds["negative"], empty_latent(16, 16))
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(enable_multigpu(patched, gpus=2, parallelism="ring"), conds["positive"], conds["negative"],
                      empty_latent(16, 16))
    assert relative_error(got, expected) == 0.0
    assert any("patches.attn1_output_patch" in r.getMessage() for r in caplog.records)


def test_ksampler_advanced_partial_steps(unet, conds):
    def run(model):
        return nodes.KSamplerAdvanced().sample(model, "enable", 3, 4, 1.0, "dpmpp_2m", "beta", conds["positive"],
                                               conds["negative"], empty_latent(18, 14), 1, 3, "disable")[0]["samples"]
    expected = run(unet)
    assert relative_error(run(enable_multigpu(unet, gpus=2, parallelism="ulysses")), expected) <= 1e-5


def test_sampler_custom_advanced_with_a_guider(unet, conds):
    from comfy_extras.nodes_custom_sampler import (BasicGuider, BasicScheduler, KSamplerSelect, RandomNoise,
                                                   SamplerCustomAdvanced)

    def run(model):
        guider = BasicGuider.execute(model, conds["positive"]).result[0]
        sigmas = BasicScheduler.execute(model, "simple", 3, 1.0).result[0]
        out = SamplerCustomAdvanced.execute(RandomNoise.execute(9).result[0], guider,
                                            KSamplerSelect.execute("euler_ancestral").result[0], sigmas,
                                            empty_latent(16, 18))
        return out.result[0]["samples"]
    expected = run(unet)
    assert relative_error(run(enable_multigpu(unet, gpus=2, parallelism="ring")), expected) <= 1e-5


def test_fill_inpaint_extra_channels_and_noise_mask(model_files):
    """FLUX Fill: 96 input channels (latent + masked image + 64 mask channels), as InpaintModelConditioning sets it up
    (its VAE encode replaced by a given latent), with a noise mask on the latent."""
    import comfy.sd
    import node_helpers
    from comfy_env import tiny_flux_state_dict
    fill = comfy.sd.load_diffusion_model_state_dict(tiny_flux_state_dict(in_channels=96))
    assert fill.model.model_config.unet_config["in_channels"] == 96
    generator = torch.Generator().manual_seed(13)
    image_latent = torch.randn(1, 16, 18, 14, generator=generator)
    mask = torch.zeros(1, 1, 144, 112)
    mask[..., 40:120, 30:90] = 1.0
    values = {"concat_latent_image": image_latent, "concat_mask": mask}
    positive = node_helpers.conditioning_set_values(flux_conditioning(77, seed=1), values)
    negative = node_helpers.conditioning_set_values(flux_conditioning(77, seed=2), values)
    latent = {"samples": image_latent.clone(), "noise_mask": mask}
    assert_parallel_equal(fill, positive=positive, negative=negative, latent=latent)
    # The CFG branches on separate GPUs: each output row has the latent's 16 channels, not the input's 96.
    group = assert_parallel_equal(fill, parallelism="auto", options=dict(sequence_degree=1), positive=positive,
                                  negative=negative, latent=latent, cfg=3.0)
    assert group.plan.replicas == 2 and group.scheduler.last_rows == [[0], [1]]


def test_model_sampling_flux_before_the_node(unet, conds):
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux
    shifted = ModelSamplingFlux().patch(unet, 1.15, 0.5, 112, 144)[0]
    assert_parallel_equal(shifted, positive=conds["positive"], negative=conds["negative"], latent=empty_latent(18, 14))


def test_easycache_before_the_node_wraps_the_parallel_call(unet, conds, caplog):
    """EasyCache's diffusion-model wrapper sits outside ours: the steps it computes run in parallel, the steps it
    reuses cost nothing on any GPU, and the result equals EasyCache on one GPU."""
    from comfy_extras.nodes_easycache import EasyCacheNode
    cached = EasyCacheNode.execute(unet, 0.2, 0.0, 1.0, False).result[0]
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        assert_parallel_equal(cached, positive=conds["positive"], negative=conds["negative"],
                              latent=empty_latent(16, 16), steps=6)
    assert not [r for r in caplog.records if "one GPU" in r.getMessage()]


def test_easycache_after_the_node_falls_back_with_a_log_line(unet, conds, caplog):
    from comfy_extras.nodes_easycache import EasyCacheNode
    parallel = EasyCacheNode.execute(enable_multigpu(unet, gpus=2, parallelism="ring"), 0.2, 0.0, 1.0, False).result[0]
    expected = ksample(EasyCacheNode.execute(unet, 0.2, 0.0, 1.0, False).result[0], latent=empty_latent(16, 16),
                       **conds)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(parallel, latent=empty_latent(16, 16), **conds)
    assert relative_error(got, expected) == 0.0
    assert any("wrappers.diffusion_model.easycache" in r.getMessage() for r in caplog.records)


def test_torch_compile_model_before_the_node(unet, conds):
    """TorchCompileModel's wrapper compiles rank 0's diffusion model (here with dynamo's 'eager' backend, which
    traces without code generation, to stay fast on the CPU); the collectives inside become graph breaks. The
    helpers compile theirs with the same settings."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    compiled = unet.clone()
    set_torch_compile_wrapper(compiled, backend="eager")
    group = assert_parallel_equal(compiled, positive=conds["positive"], negative=conds["negative"],
                                  latent=empty_latent(16, 16))
    # The helpers compiled their model with the node's settings too, so no rank is left eager.
    for stats in group.helper_stats().values():
        assert stats["compiled"] and stats["compiled"]["backend"] == "eager", stats
    # Without the node the helpers run eagerly again.
    assert_parallel_equal(unet, positive=conds["positive"], negative=conds["negative"], latent=empty_latent(16, 16))
    assert all(stats["compiled"] is None for stats in helpers.current_group().helper_stats().values())


def test_torch_compile_model_compiles_nothing_per_step(unet, conds, monkeypatch):
    """Rank 0's host work (dispatch to the helpers, graph replay, the wait for the step) runs inside the compiled
    diffusion model but outside dynamo: traced, it was compiled again at every step (its guards held the step's
    tensors), which on 2×H200 made a compiled parallel step 2.3× slower than one GPU. From a prompt's second step
    on, nothing compiles. (With ComfyUI's GPU attention: its CPU one, sub-quadratic, is compiled again at every step
    on one device too, as its guards hold the free memory.)"""
    import comfy.ldm.flux.math
    import comfy.ldm.modules.attention
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import compilation_time_metrics
    from comfy_xdit_patch.bench import run_sampler
    monkeypatch.setattr(comfy.ldm.flux.math, "optimized_attention", comfy.ldm.modules.attention.attention_pytorch)
    compiled = unet.clone()
    set_torch_compile_wrapper(compiled, backend="eager")
    parallel = enable_multigpu(compiled, gpus=2, parallelism="ulysses")
    latent = empty_latent(16, 16)["samples"]
    traced_by_step = []
    run_sampler(parallel, latent, conds["positive"], conds["negative"], 4, torch.device("cpu"),
                on_step=lambda step: traced_by_step.append(len(compilation_time_metrics["bytecode_tracing"])))
    assert traced_by_step[0] > 0, "nothing was compiled: the test would prove nothing"
    assert traced_by_step[1:] == [traced_by_step[0]] * 3, f"frames traced by step: {traced_by_step}"
    assert helpers.current_group() is not None


def test_redux_style_model_appends_image_tokens_to_the_text(unet, conds):
    """StyleModelLoader + StyleModelApply (Redux) with a CLIP-vision output given directly (no SigLIP weights here):
    729 image tokens join the 77 text tokens, and the longer context splits like any other."""
    import comfy.clip_vision
    style_model = nodes.StyleModelLoader().load_style_model("tiny_redux.safetensors")[0]
    vision = comfy.clip_vision.Output()
    vision["last_hidden_state"] = torch.randn(1, 729, 1152, generator=torch.Generator().manual_seed(12))
    positive = nodes.StyleModelApply().apply_stylemodel(conds["positive"], style_model, vision, 1.0, "multiply")[0]
    assert positive[0][0].shape[1] == 77 + 729
    assert_parallel_equal(unet, positive=positive, negative=conds["negative"], latent=empty_latent(16, 16))


def redux_with_attention_bias(conds, strength=0.5):
    """Redux at a strength other than 1 with strength_type attn_bias: ComfyUI adds an attention mask (a bias of
    log(strength) on the 729 Redux tokens, for every query), the case of most Redux workflows that tune strength."""
    import comfy.clip_vision
    style_model = nodes.StyleModelLoader().load_style_model("tiny_redux.safetensors")[0]
    vision = comfy.clip_vision.Output()
    vision["last_hidden_state"] = torch.randn(1, 729, 1152, generator=torch.Generator().manual_seed(12))
    return nodes.StyleModelApply().apply_stylemodel(conds["positive"], style_model, vision, strength, "attn_bias")[0]


@pytest.mark.parametrize("gpus", [2, 4])
def test_redux_strength_attention_mask_is_sequence_parallel_with_ulysses(unet, conds, gpus, caplog):
    positive = redux_with_attention_bias(conds)
    assert positive[0][1]["attention_mask"].shape[-1] == 77 + 729 + 1
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        assert_parallel_equal(unet, gpus=gpus, parallelism="ulysses", positive=positive,
                              negative=conds["negative"], latent=empty_latent(18, 14), cfg=2.0)
    assert not [r.getMessage() for r in caplog.records if "one GPU" in r.getMessage()]


def test_attention_mask_with_ring_runs_on_one_gpu_naming_the_fix(unet, conds, caplog):
    positive = redux_with_attention_bias(conds)
    latent = empty_latent(16, 16)
    expected = ksample(unet, positive, conds["negative"], latent)
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch"):
        got = ksample(enable_multigpu(unet, gpus=2, parallelism="ring"), positive, conds["negative"], latent)
    assert torch.equal(got, expected)
    assert any("attention mask" in r.getMessage() and "ulysses" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def flux2():
    import comfy.sd
    from comfy_env import tiny_flux2_state_dict
    model = comfy.sd.load_diffusion_model_state_dict(tiny_flux2_state_dict())
    assert type(model.model).__name__ == "Flux2"
    return model


def flux2_conds(seed=1):
    return [[torch.randn(1, 30, 256, generator=torch.Generator().manual_seed(seed)), {"guidance": 4.0}]]


def test_flux2_text_to_image(flux2):
    assert_parallel_equal(flux2, positive=flux2_conds(1), negative=flux2_conds(2),
                          latent={"samples": torch.zeros(1, 128, 9, 7)})


def test_flux2_edit_with_reference_latents(flux2):
    from comfy_extras.nodes_edit_model import ReferenceLatent
    reference = {"samples": torch.randn(1, 128, 6, 5, generator=torch.Generator().manual_seed(3))}
    positive = ReferenceLatent.execute(flux2_conds(1), reference).result[0]
    assert_parallel_equal(flux2, positive=positive, negative=flux2_conds(2), latent={"samples": torch.zeros(1, 128, 9, 7)})


def test_flux2_index_timestep_zero_per_token_timesteps_are_sharded(flux2):
    """index_timestep_zero gives the reference tokens their own (zero) timestep through per-token modulation
    ranges: each shard leads with generated-image tokens and gets the ranges in its own coordinates."""
    from comfy_extras.nodes_edit_model import ReferenceLatent
    from comfy_extras.nodes_flux import FluxKontextMultiReferenceLatentMethod
    reference = {"samples": torch.randn(1, 128, 6, 5, generator=torch.Generator().manual_seed(3))}
    positive = ReferenceLatent.execute(flux2_conds(1), reference).result[0]
    positive = FluxKontextMultiReferenceLatentMethod.execute(positive, "index_timestep_zero").result[0]
    latent = {"samples": torch.zeros(1, 128, 9, 7)}
    for gpus, parallelism in ((2, "ring"), (4, "usp")):
        assert_parallel_equal(flux2, gpus=gpus, parallelism=parallelism, positive=positive,
                              negative=flux2_conds(2), latent=latent)


@pytest.fixture(scope="module")
def chroma():
    from comfy_env import load_tiny_chroma
    model = load_tiny_chroma()
    assert type(model.model.diffusion_model).__name__ == "Chroma"
    return model


@pytest.mark.parametrize("parallelism", ["ulysses", "ring"])
def test_chroma_text_to_image(chroma, conds, parallelism):
    # Chroma's forward has no post_input point: the tokens are sliced where forward_orig is entered.
    assert_parallel_equal(chroma, parallelism=parallelism, positive=conds["positive"], negative=conds["negative"],
                          latent=empty_latent(18, 14))


def test_chroma_with_cfg_and_a_batch_of_two(chroma, conds):
    assert_parallel_equal(chroma, parallelism="ring", positive=conds["positive"], negative=conds["negative"],
                          latent=empty_latent(16, 16, batch=2), cfg=3.0)
