"""The README's main-job command on a machine without GPUs: 1 vs N CPU ranks on ComfyUI's FLUX, a table with the
error against 1 rank, and what the benchmark's profiling reports; the registry's other models (SD3.5, SDXL, Wan video,
HunyuanVideo, Qwen-Image, Z-Image, Krea 2, MiniMax H3) detected by ComfyUI's loader and sampled at reduced sizes."""
import os
import re
import subprocess
import sys

import pytest

from comfy_env import COMFYUI_PATH, REPO


def test_main_job_command_on_cpu_ranks_says_what_its_figures_mean():
    """On CPU ranks: the line that says the error is the result and the time ratio only the plumbing, a table of the
    columns that have a figure (the helpers' start among them), the error within float32 rounding, and the whole warm
    prompt without asking for it."""
    out = subprocess.run([sys.executable, "-m", "comfy_xdit_patch.bench", "--cpu", "--steps", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, COMFYUI_PATH=COMFYUI_PATH, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    meaning = next(i for i, line in enumerate(lines) if line.startswith("# CPU ranks:"))
    assert "rel. err against 1 device" in lines[meaning] and "not a GPU speed-up" in lines[meaning]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
    header, rows = table[0], table[2:]
    assert lines.index("| " + " | ".join(header) + " |") > meaning
    assert len(rows) == 1 and all(len(row) == len(header) for row in rows)
    empty = [name for i, name in enumerate(header) if all(row[i] == "-" for row in rows)]
    assert not empty, f"empty columns {empty}"
    row = dict(zip(header, rows[0]))
    assert row["config"] == "auto" and row["layout"] == "2 CPU ranks (ulysses 2 x ring 1)"
    assert re.fullmatch(r"\d+\.\d\dx", row["time ratio"]), row["time ratio"]
    assert float(row["rel. err vs 1-dev"]) <= 1e-5, f"relative error {row['rel. err vs 1-dev']}"
    assert float(row["helper start s"]) > 0
    assert "speed-up" not in header and "peak GiB 1-dev" not in header
    assert "end-to-end 4-step prompt at 256: 1 device" in out.stdout


def test_kernel_time_reports_busy_time_families_and_the_late_start_barrier():
    """What ``bench --gpu-busy`` and COMFY_XDIT_PROFILE_HELPER print, from a made-up trace of two steps: the union of
    kernel intervals (two streams overlap), each family's summed time, and the longest barrier of each step (a rank
    that started late) apart from the others."""
    from types import SimpleNamespace
    from torch.autograd import DeviceType
    from comfy_xdit_patch.profiling import kernel_family, kernel_time

    def kernel(name, start_us, end_us):
        return SimpleNamespace(name=name, device_type=DeviceType.CUDA,
                               time_range=SimpleNamespace(start=start_us, end=end_us))

    events = [kernel("nvjet_tst_128x256_h_bz_coopA", 0, 600), kernel("pytorch_flash::flash_fwd_kernel", 500, 900),
              kernel("barrier", 900, 2900), kernel("scatter_qkv", 2900, 3000), kernel("barrier", 3000, 3010),
              kernel("gather_out", 3010, 3050), kernel("barrier", 3050, 3070),
              kernel("triton_poi_fused_add", 3070, 3100),
              kernel("Memcpy DtoD (Device -> Device)", 9000, 9100), kernel("barrier", 9100, 10100),
              kernel("barrier", 10100, 10130), SimpleNamespace(name="cpu op", device_type=DeviceType.CPU,
                                                              time_range=SimpleNamespace(start=0, end=99999))]
    busy_ms, span_ms, families = kernel_time(SimpleNamespace(events=lambda: events), steps=2)
    assert (busy_ms, span_ms) == (3.1 / 2 + 1.13 / 2, 10.13 / 2)
    assert kernel_family("ncclDevKernel_AllGather_RING_LL") == "nccl" and families["gemm"] == 0.3
    assert families["attention"] == 0.2 and families["exchange"] == 0.07 and families["copy"] == 0.05
    assert families["barrier: longest a step"] == (2.0 + 1.0) / 2 and families["barrier: median µs"] == 20.0


def test_a_helper_profile_setting_it_cannot_read_is_named_not_raised(caplog):
    import logging
    from comfy_xdit_patch.profiling import HelperProfile, describe
    log = logging.getLogger("comfy_xdit_patch.test")
    with caplog.at_level(logging.WARNING, logger="comfy_xdit_patch.test"):
        profile = HelperProfile("5", log)
    assert profile.count == 0 and "is not 'first,count'" in caplog.text
    assert HelperProfile("5,4", log).first == 5 and describe(0.0, 0.0, {}) == "no kernel was traced"


def test_no_figure_comes_from_the_processs_first_prompt(monkeypatch, capsys):
    """ComfyUI's first prompt in a process computes slightly differently from every later one (6.93e-3 at 1024² on
    an H200, later prompts bit-equal: docs/benchmarks.md), so the bench settles with one unmeasured step at each
    resolution before its 1-GPU reference."""
    from comfy_xdit_patch import bench
    calls = []
    original = bench.sample

    def recorded(model, latent_hw, steps, *args, **kwargs):
        calls.append((latent_hw, steps))
        return original(model, latent_hw, steps, *args, **kwargs)

    monkeypatch.setattr(bench, "sample", recorded)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench.main(["--cpu", "--res", "128,192", "--steps", "2", "--parallelism", "ulysses", "--e2e-steps", "0"])
    assert calls[:3] == [((16, 16), 1), ((24, 24), 1), ((16, 16), 2)], calls
    out = capsys.readouterr().out
    assert "| ulysses |" in out and "end-to-end" not in out


def test_a_gpu_table_keeps_the_columns_it_has_figures_for(capsys):
    """Memory and the graphed baseline have figures on GPUs, so they stay; the kernel baseline was not asked for."""
    from comfy_xdit_patch.bench import print_table
    row = dict(parallelism="auto +graphs", layout="2 GPUs (ulysses 2 x ring 1)", res=1024, tokens=4608, step1=0.5,
               stepn=0.28, speedup=1.79, spread=(1.79, 1.79), kernel_speedup=None, graph_speedup=1.7, total1=5.1,
               totaln=12.0, err=2e-3, peak1=30 * 2**30, peak0=20 * 2**30, helper_peaks=[19 * 2**30],
               helper_weights=[22 * 2**30], start_s=6.5)
    print_table([row], cpu=False, repeat=1)
    header, _, cells = ([c.strip() for c in line.strip("|").split("|")]
                        for line in capsys.readouterr().out.splitlines()[:3])
    assert dict(zip(header, cells)) == {
        "config": "auto +graphs", "layout": "2 GPUs (ulysses 2 x ring 1)", "res": "1024", "tokens": "4608",
        "1-dev ms/step": "500.0", "N-dev ms/step": "280.0", "speed-up": "1.79x", "vs 1-dev graphed": "1.70x",
        "1-dev 1st run s": "5.10", "N-dev 1st run s": "12.00", "rel. err vs 1-dev": "2.00e-03",
        "peak GiB 1-dev": "30.0", "peak GiB per rank": "20.0 / 19.0", "weights GiB per helper": "22.0",
        "helper start s": "6.5"}


def test_step_starts_pairs_each_graph_launch_with_its_kernels(tmp_path):
    """COMFY_XDIT_TRACE_DIR's traces (torch's chrome format, gzipped): per cudaGraphLaunch, the launch, the first
    kernel after it and the last kernel's end before the next launch, on the machine's clock (base time added)."""
    import gzip
    import json
    from comfy_xdit_patch.profiling import step_starts
    events = [{"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 100, "dur": 5},
              {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 110, "dur": 50},
              {"ph": "X", "cat": "kernel", "name": "flash", "ts": 160, "dur": 30},
              {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 300, "dur": 5},
              {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 320, "dur": 10},
              {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 400, "dur": 5}]
    path = str(tmp_path / "rank0.json.gz")
    with gzip.open(path, "wt") as f:
        json.dump({"baseTimeNanoseconds": 1_000_000, "traceEvents": events}, f)
    assert step_starts(path) == [(1100, 1110, 1190), (1300, 1320, 1330)]


def _meta_model(name):
    """The registry's weights for ``name`` on meta (shapes only), ComfyUI's detected config, and the model ComfyUI
    builds from that config, also on meta."""
    import torch
    import comfy.model_detection
    from comfy_xdit_patch.bench_models import MODELS, weight_shapes
    state = MODELS[name].state_dict(torch.bfloat16, "meta")
    config = comfy.model_detection.model_config_from_unet(state, "")
    with weight_shapes():
        model = config.get_model(state, device="meta")
    return state, config, model


def test_the_sd35_weights_are_detected_as_sd3_with_their_heads_and_self_attention_layers():
    """ComfyUI has one model config for SD3 and SD3.5 (supported_models.SD3); its MMDiT has depth heads of 64."""
    _, large, model = _meta_model("sd35-large")
    assert type(large).__name__ == "SD3" and large.unet_config["depth"] == 38
    assert large.unet_config["qk_norm"] == "rms" and large.unet_config["x_block_self_attn_layers"] == []
    assert model.diffusion_model.num_heads == 38 and model.diffusion_model.hidden_size == 2432
    assert model.diffusion_model.context_embedder.in_features == 4096 and model.adm_channels == 2048
    _, medium, model = _meta_model("sd35-medium")
    assert type(medium).__name__ == "SD3" and model.diffusion_model.num_heads == 24
    assert medium.unet_config["x_block_self_attn_layers"] == list(range(13))


def test_the_sdxl_weights_are_detected_as_sdxl_and_take_the_conditioning_clip_text_encode_sdxl_gives():
    """SDXL's ADM input is CLIP-G's pooled output and six embedded sizes: 2816 wide only in that format."""
    import torch
    from comfy_xdit_patch.bench_models import MODELS
    _, config, model = _meta_model("sdxl")
    unet = config.unet_config
    assert type(config).__name__ == "SDXL" and type(model).__name__ == "SDXL"
    assert (unet["in_channels"], unet["model_channels"], unet["context_dim"], unet["adm_in_channels"]) == \
        (4, 320, 2048, 2816)
    assert unet["transformer_depth"] == [0, 0, 2, 2, 10, 10]
    assert model.diffusion_model.middle_block[1].transformer_blocks[0].attn1.heads == 20
    [[tokens, extra]] = MODELS["sdxl"].conditioning(77, 1, (1024, 768))
    assert tokens.shape == (1, 77, 2048) and (extra["width"], extra["height"]) == (768, 1024)
    assert model.encode_adm(**extra, device=torch.device("cpu")).shape == (1, 2816)


def test_an_sd35_shaped_model_samples_at_its_cfg_with_its_conditioning():
    """The SD3 builder at a reduced size (2 heads, the second self-attention on its first layer), through ComfyUI's
    loader and sampler with the registry's conditioning at cfg 4: cond and uncond in one call."""
    import dataclasses
    import functools
    import torch
    from comfy_xdit_patch import bench
    from comfy_xdit_patch.bench_models import MODELS, random_sd3_state_dict
    small = dict(depth=2, pos_embed_max_size=16, x_block_self_attn_layers=(0,))
    spec = dataclasses.replace(MODELS["sd35-medium"], state_dict=functools.partial(random_sd3_state_dict, small))
    model = bench.load_random_model(spec, torch.float32, torch.device("cpu"))
    assert type(model.model).__name__ == "SD3" and model.model.diffusion_model.num_heads == 2
    batches = []

    def record(apply_model, call):
        batches.append(call["input"].shape[0])
        return apply_model(call["input"], call["timestep"], **call["c"])

    model.set_model_unet_function_wrapper(record)
    out, _, _ = bench.sample(model, (16, 16), 2, 20, torch.device("cpu"), spec=spec)
    assert out.shape == (1, 16, 16, 16) and torch.isfinite(out).all()
    assert spec.cfg > 1 and batches == [2, 2]


def test_the_main_job_times_an_sd35_shaped_model_on_cpu_ranks_at_its_cfg(monkeypatch, capsys):
    """``bench --model sd35-medium`` with the registry's SD3 builder at a reduced size (4 heads): the same table as
    FLUX's, the 1-device reference and the parallel run at cfg 4, within float32 rounding of each other."""
    import dataclasses
    import functools
    from comfy_xdit_patch import bench, bench_models
    small = dict(depth=4, pos_embed_max_size=16, x_block_self_attn_layers=(0,))
    monkeypatch.setitem(bench_models.MODELS, "sd35-medium", dataclasses.replace(
        bench_models.MODELS["sd35-medium"], state_dict=functools.partial(bench_models.random_sd3_state_dict, small)))
    [row] = bench.main(["--cpu", "--model", "sd35-medium", "--res", "128", "--steps", "2", "--e2e-steps", "0"])
    assert row["layout"] == "2 CPU ranks (ulysses 2 x ring 1)" and row["tokens"] == 64 + 77
    assert row["err"] <= 1e-5, row["err"]
    assert "random SD3.5-Medium-size MMDiT, cfg 4," in capsys.readouterr().out


def test_passthrough_times_the_node_on_one_device_and_its_latents_are_bit_identical(capsys):
    """``--passthrough`` on the CPU: the unpatched model, the node with gpus=1 and the node's hooked clone, each
    round's final latent equal bit for bit to the unpatched model's; no helper starts."""
    from comfy_xdit_patch import bench
    from comfy_xdit_patch.runtime import helper_group as helpers
    helpers.shutdown_group()
    rows = bench.main(["--cpu", "--model", "tiny", "--passthrough", "--res", "128", "--steps", "3", "--warmup", "1",
                       "--repeat", "2"])
    variants = [row["variant"] for row in rows]
    assert variants == ["ComfyUI, unpatched", "node, gpus=1", "node's hooks, calls on 1 device"]
    assert helpers.current_group() is None, "the hooked clone started helpers instead of passing through"
    assert all(row["identical"] and row["max_diff"] == 0.0 for row in rows), rows
    out = capsys.readouterr().out
    table = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]
    header = table[0]
    assert header == ["variant", "res", "tokens", "ms/step", "vs unpatched", "max abs diff", "bit-identical"]
    assert [dict(zip(header, row))["bit-identical"] for row in table[2:]] == ["yes"] * len(rows)
    assert "random tiny FLUX, cfg 1," in out and "2 interleaved rounds" in out


def test_the_wan_weights_are_detected_as_wan_with_their_heads_widths_and_latent_channels():
    """ComfyUI's detection reads Wan's sizes from the shapes and takes num_heads as dim // 128; the 5B's 48 output
    channels make it Wan 2.2's config, with the latent format of its 16x VAE."""
    from comfy_xdit_patch.bench_models import MODELS
    expected = {"wan-14b": ("WAN21_T2V", 5120, 40, 40, 13824, 16), "wan-1.3b": ("WAN21_T2V", 1536, 12, 30, 8960, 16),
                "wan-5b": ("WAN22_T2V", 3072, 24, 30, 14336, 48)}
    for name, (config_class, dim, heads, layers, ffn_dim, channels) in expected.items():
        _, config, model = _meta_model(name)
        wan = model.diffusion_model
        assert type(config).__name__ == config_class, name
        assert (wan.dim, wan.num_heads, len(wan.blocks), wan.ffn_dim) == (dim, heads, layers, ffn_dim), name
        assert (wan.in_dim, wan.out_dim, wan.patch_size) == (channels, channels, (1, 2, 2)), name
        assert wan.text_embedding[0].in_features == 4096 and wan.blocks[0].self_attn.num_heads == heads, name
        assert config.latent_format.latent_channels == MODELS[name].latent_channels == channels, name


def test_a_wan_clip_has_a_latent_frame_per_4_pixel_frames_and_a_token_per_2x2_latent_patch():
    """Wan's VAE keeps the first frame and folds each further 4 into one latent frame; 8x spatially (16x for the
    5B); a token per 2x2 patch of each latent frame. Its text is umT5's 512 tokens of 4096 and no pooled output."""
    from comfy_xdit_patch.bench_models import MODELS
    wan = MODELS["wan-14b"]
    [clip] = [wan.resolution(text) for text in wan.resolutions]
    assert str(clip) == "832x480, 33 frames"
    assert wan.latent_size(clip) == (9, 60, 104) and wan.tokens(clip, 512) == 9 * 30 * 52
    five_b = MODELS["wan-5b"]
    clip = five_b.resolution("1280x704", frames=81)
    assert five_b.latent_size(clip) == (21, 44, 80) and five_b.tokens(clip, 512) == 21 * 22 * 40
    [[context, extra]] = wan.conditioning(wan.text_tokens, 1, (480, 832))
    assert context.shape == (1, 512, 4096) and extra == {"pooled_output": None} and wan.cfg > 1


def test_frames_are_for_video_models_and_a_video_size_is_width_x_height(capsys):
    """Checked before anything loads; the parser's message says what it takes."""
    from comfy_xdit_patch import bench
    for argv, message in [(["--cpu", "--frames", "9"], "--frames: the default model makes images"),
                          (["--cpu", "--model", "sdxl", "--frames", "9"], "--frames: sdxl makes images"),
                          (["--cpu", "--model", "wan-1.3b", "--res", "832"], "--res 832: WIDTHxHEIGHT in pixels"),
                          (["--cpu", "--model", "wan-5b", "--frames", "0"], "a clip has 1 frame or more")]:
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert message in capsys.readouterr().err, argv


def _small_wan(name):
    """The registry's Wan ``name`` with its builder at a reduced size: 2 heads of 128 (the width ComfyUI's detection
    assumes), 2 layers, the model's channels."""
    import dataclasses
    import functools
    from comfy_xdit_patch.bench_models import MODELS, random_wan_state_dict
    small = dict(dim=256, heads=2, ffn_dim=512, layers=2, channels=MODELS[name].latent_channels)
    return dataclasses.replace(MODELS[name], state_dict=functools.partial(random_wan_state_dict, small))


def test_the_main_job_times_a_wan_shaped_model_on_cpu_ranks_with_video_latents(monkeypatch, capsys):
    """``bench --model wan-1.3b`` at a reduced size: 5-D latents of 3 latent frames (9 pixel frames), cfg 5, the
    tokens split over 2 CPU ranks (Ulysses, a head each) within float32 rounding of 1 rank."""
    from comfy_xdit_patch import bench, bench_models
    monkeypatch.setitem(bench_models.MODELS, "wan-1.3b", _small_wan("wan-1.3b"))
    latents, block_tokens = [], set()
    sample, load = bench.run_sampler, bench.load_random_model

    def recorded_sample(model, latent, *args, **kwargs):
        latents.append(tuple(latent.shape))
        return sample(model, latent, *args, **kwargs)

    def recorded_load(*args, **kwargs):
        model = load(*args, **kwargs)
        # Rank 0's first block: every video token on 1 device, its half of them on 2 ranks.
        model.model.diffusion_model.blocks[0].register_forward_pre_hook(
            lambda block, inputs: block_tokens.add(inputs[0].shape[1]))
        return model

    monkeypatch.setattr(bench, "run_sampler", recorded_sample)
    monkeypatch.setattr(bench, "load_random_model", recorded_load)
    [row] = bench.main(["--cpu", "--model", "wan-1.3b", "--frames", "9", "--res", "64x48", "--steps", "2",
                        "--e2e-steps", "0"])
    assert set(latents) == {(1, 16, 3, 6, 8)}, latents
    assert block_tokens == {36, 18}, block_tokens
    assert row["layout"] == "2 CPU ranks (ulysses 2 x ring 1)" and row["tokens"] == 3 * 3 * 4
    assert row["err"] <= 1e-5, row["err"]
    out = capsys.readouterr().out
    assert "random Wan-1.3B-size video DiT, cfg 5," in out and "| 64x48, 9 frames | 36 |" in out


def test_passthrough_of_a_wan22_shaped_model_is_bit_identical(monkeypatch):
    """``--passthrough`` with the 5B's shape (48 channels, 16x VAE): the node's hooks pass every call through."""
    from comfy_xdit_patch import bench, bench_models
    from comfy_xdit_patch.runtime import helper_group as helpers
    helpers.shutdown_group()
    monkeypatch.setitem(bench_models.MODELS, "wan-5b", _small_wan("wan-5b"))
    rows = bench.main(["--cpu", "--model", "wan-5b", "--passthrough", "--frames", "9", "--res", "128x96", "--steps",
                       "2", "--warmup", "1", "--repeat", "2"])
    assert [row["tokens"] for row in rows] == [3 * 3 * 4] * 3
    assert helpers.current_group() is None
    assert all(row["identical"] and row["max_diff"] == 0.0 for row in rows), rows


@pytest.mark.parametrize("name,latent_size", [("tiny", (8, 8)), ("wan-1.3b", (2, 4, 4)), ("z-image", (8, 8))])
def test_the_graphed_baseline_passes_each_models_arguments_through(monkeypatch, name, latent_size):
    """``--graph-baseline``'s wrapper takes any model's forward arguments (Wan's differ from FLUX's; Lumina 2's and
    Z-Image's take transformer_options by name); on the CPU its steps run eagerly and equal the unpatched model's bit
    for bit."""
    import torch
    from comfy_xdit_patch import bench
    from comfy_xdit_patch.bench_models import MODELS
    from comfy_xdit_patch.runtime import step_graphs
    if name == "z-image":
        spec, model = _tiny_z_image()
    else:
        spec = _small_wan(name) if MODELS[name].frames else MODELS[name]
        model = bench.load_random_model(spec, torch.float32, torch.device("cpu"))
    monkeypatch.setattr(step_graphs.StepGraphs, "choose", lambda graphs, key: step_graphs.EAGER)   # no CUDA here
    calls, run = [], step_graphs.StepGraphs.run

    def recorded_run(graphs, key, mode, forward, inputs):
        calls.append(key)
        return run(graphs, key, mode, forward, inputs)

    monkeypatch.setattr(step_graphs.StepGraphs, "run", recorded_run)
    expected, _, _ = bench.sample(model, latent_size, 2, 8, torch.device("cpu"), spec=spec)
    got, _, _ = bench.sample(bench._graphed_one_device(model, torch.device("cpu")), latent_size, 2, 8,
                             torch.device("cpu"), spec=spec)
    assert len(calls) == 2 and torch.equal(got, expected)


def test_the_hunyuan_video_weights_are_detected_as_hunyuan_video_at_full_size():
    """ComfyUI's detection rebuilds HunyuanVideo 1.0 from the shapes: 20 double and 40 single blocks of 24 heads over
    LLaVA's 4096-wide text, CLIP-L's pooled 768, guidance embedded; a clip's tokens are its 2x2 patches and the text."""
    from comfy_xdit_patch.bench_models import MODELS
    _, config, model = _meta_model("hunyuan-video")
    hunyuan = model.diffusion_model
    assert type(config).__name__ == "HunyuanVideo" and config.latent_format.latent_channels == 16
    assert (len(hunyuan.double_blocks), len(hunyuan.single_blocks), hunyuan.num_heads) == (20, 40, 24)
    assert (hunyuan.hidden_size, hunyuan.params.context_in_dim, hunyuan.params.vec_in_dim) == (3072, 4096, 768)
    assert hunyuan.params.guidance_embed and hunyuan.patch_size == [1, 2, 2]
    spec = MODELS["hunyuan-video"]
    clip = spec.resolution("848x480")
    assert spec.tokens(clip, 256) == 9 * 30 * 53 + 256


def test_qwen_image_z_image_and_krea2_are_detected_at_full_size_with_their_heads_and_text_widths():
    """ComfyUI's detection rebuilds each from the shapes alone: Qwen-Image's 60 double-stream blocks of 24 heads of
    128 over Qwen2.5-VL's 3584-wide text; Z-Image Turbo's NextDiT of width 3840 (30 heads, 2 refiner blocks each,
    learned padding to 32 tokens) over Qwen3-4B's 2560; Krea 2's 28 blocks of 48 query and 12 key/value heads over a
    12-layer stack of Qwen3-VL-4B's 2560, fused by 20 heads."""
    from comfy_xdit_patch.bench_models import MODELS
    _, config, model = _meta_model("qwen-image")
    qwen = model.diffusion_model
    assert type(config).__name__ == "QwenImage" and type(config.latent_format).__name__ == "Wan21"
    assert (len(qwen.transformer_blocks), qwen.transformer_blocks[0].attn.heads, qwen.inner_dim) == (60, 24, 3072)
    assert (qwen.txt_in.in_features, qwen.in_channels, qwen.out_channels) == (3584, 64, 16)
    assert qwen.pe_embedder.axes_dim == [16, 56, 56]

    _, config, model = _meta_model("z-image")
    z_image = model.diffusion_model
    assert type(config).__name__ == "ZImage" and type(config.latent_format).__name__ == "Flux"
    assert (z_image.dim, z_image.n_heads, len(z_image.layers), z_image.layers[0].attention.head_dim) == \
        (3840, 30, 30, 128)
    assert (len(z_image.noise_refiner), len(z_image.context_refiner), z_image.pad_tokens_multiple) == (2, 2, 32)
    assert z_image.cap_embedder[1].in_features == 2560 and z_image.x_embedder.in_features == 16 * 2 * 2

    _, config, model = _meta_model("krea2")
    krea2 = model.diffusion_model
    attention = krea2.blocks[0].attn
    assert type(config).__name__ == "Krea2" and type(config.latent_format).__name__ == "Wan21"
    assert (len(krea2.blocks), attention.heads, attention.kvheads, attention.headdim) == (28, 48, 12, 128)
    assert (krea2.txtlayers, krea2.txtdim, krea2.txtfusion.layerwise_blocks[0].attn.heads) == (12, 2560, 20)
    for name in ("qwen-image", "z-image", "krea2"):
        assert MODELS[name].latent_channels == 16 and MODELS[name].resolutions == (1024,), name


def test_the_newest_image_models_take_the_conditioning_their_encoders_give():
    """Qwen-Image: 256 tokens of 3584 at cfg 4, no mask (ComfyUI drops an all-ones one); Z-Image Turbo: 128 of 2560
    and the all-ones mask, which ComfyUI's Lumina 2 model turns into the text's length; Krea 2: the 12 layers of 2560
    side by side. Z-Image pads text and image to multiples of 32."""
    import torch
    from comfy_xdit_patch.bench_models import MODELS
    qwen, z_image, krea2 = MODELS["qwen-image"], MODELS["z-image"], MODELS["krea2"]
    [[context, extra]] = qwen.conditioning(qwen.text_tokens, 1, (1024, 1024))
    assert context.shape == (1, 256, 3584) and extra == {"pooled_output": None} and qwen.cfg == 4
    assert qwen.tokens(1024, 256) == 64 * 64 + 256 and qwen.tokens(1328, 256) == 83 * 83 + 256
    [[context, extra]] = z_image.conditioning(z_image.text_tokens, 1, (1024, 1024))
    assert context.shape == (1, 128, 2560)
    assert torch.equal(extra["attention_mask"], torch.ones(1, 128, dtype=torch.long))
    _, _, model = _meta_model("z-image")
    conds = model.extra_conds(cross_attn=context, **extra)
    assert "attention_mask" not in conds and conds["num_tokens"].cond == 128 and z_image.cfg == 1
    assert z_image.tokens(1024, 77) == 64 * 64 + 96 and z_image.tokens(1000, 128) == 125 * 32 + 128
    [[context, extra]] = krea2.conditioning(krea2.text_tokens, 1, (1024, 1024))
    assert context.shape == (1, 256, 12 * 2560) and extra == {"pooled_output": None} and krea2.cfg == 4


def test_sizes_comfyuis_detection_would_build_otherwise_are_refused():
    """Detection takes Qwen-Image's heads and text width as fixed, knows Z-Image by its width alone, takes Krea 2's
    heads 128 wide and keeps its 20 text-fusion heads: other sizes would load as another model, or not at all."""
    import torch
    from comfy_xdit_patch.bench_models import (KREA2, QWEN_IMAGE, Z_IMAGE, random_krea2_state_dict,
                                               random_qwen_image_state_dict, random_z_image_state_dict)
    for builder, size in [(random_qwen_image_state_dict, dict(QWEN_IMAGE, heads=12, head_dim=256)),
                          (random_z_image_state_dict, dict(Z_IMAGE, dim=2560, heads=20)),
                          (random_krea2_state_dict, dict(KREA2, features=4096)),
                          (random_krea2_state_dict, dict(KREA2, txtdim=1024 + 8))]:
        with pytest.raises(ValueError, match="detection"):
            builder(size, torch.bfloat16, "meta")


def _small_krea2():
    """The registry's Krea 2 with its builder and conditioning at a reduced size that ComfyUI's detection rebuilds:
    4 query heads of 128 (the width detection assumes) sharing 2 key/value heads, 2 layers, a text stack of 2 layers
    of 160 (8 per text-fusion head)."""
    import dataclasses
    import functools
    from comfy_xdit_patch.bench_models import MODELS, krea2_conditioning, random_krea2_state_dict
    small = dict(features=512, heads=4, kvheads=2, layers=2, txtlayers=2, txtdim=160)
    return dataclasses.replace(MODELS["krea2"], state_dict=functools.partial(random_krea2_state_dict, small),
                               conditioning=functools.partial(krea2_conditioning, small))


def test_the_main_job_times_a_krea2_shaped_model_on_cpu_ranks_at_its_cfg(monkeypatch, capsys):
    """``bench --model krea2`` at a reduced size: detected as Krea 2, cond and uncond in one call (cfg 4), the joint
    sequence of text and image split over 2 CPU ranks (Ulysses, 2 query heads each), within float32 rounding of 1
    rank."""
    from comfy_xdit_patch import bench, bench_models
    monkeypatch.setitem(bench_models.MODELS, "krea2", _small_krea2())
    models, block_inputs = [], set()
    load = bench.load_random_model

    def recorded_load(*args, **kwargs):
        model = load(*args, **kwargs)
        models.append(model.model)
        # Rank 0's first block: the whole joint sequence on 1 device, its share of the text and the image on 2 ranks.
        model.model.diffusion_model.blocks[0].register_forward_pre_hook(
            lambda block, inputs: block_inputs.add(tuple(inputs[0].shape[:2])))
        return model

    monkeypatch.setattr(bench, "load_random_model", recorded_load)
    [row] = bench.main(["--cpu", "--model", "krea2", "--res", "128", "--steps", "2", "--e2e-steps", "0"])
    [model] = models
    assert type(model).__name__ == "Krea2" and model.diffusion_model.blocks[0].attn.kvheads == 2
    assert block_inputs == {(2, 64 + 77), (2, 32 + 39)}, block_inputs
    assert row["layout"] == "2 CPU ranks (ulysses 2 x ring 1)" and row["tokens"] == 64 + 77
    assert row["err"] <= 1e-5, row["err"]
    assert "random Krea-2-size single-stream DiT, cfg 4," in capsys.readouterr().out


def test_passthrough_of_a_krea2_shaped_model_is_bit_identical(monkeypatch):
    from comfy_xdit_patch import bench, bench_models
    from comfy_xdit_patch.runtime import helper_group as helpers
    helpers.shutdown_group()
    monkeypatch.setitem(bench_models.MODELS, "krea2", _small_krea2())
    rows = bench.main(["--cpu", "--model", "krea2", "--passthrough", "--res", "128", "--steps", "2", "--warmup", "1",
                       "--repeat", "2"])
    assert [row["tokens"] for row in rows] == [64 + 77] * 3
    assert helpers.current_group() is None
    assert all(row["identical"] and row["max_diff"] == 0.0 for row in rows), rows


def _tiny_z_image():
    """A tiny Z-Image (tests/comfy_env.py: 6 heads of 48, text 64 wide), built through ComfyUI's ZImage config class,
    since detection knows Z-Image only at its full width; and the registry's entry with conditioning of that width."""
    import dataclasses
    import functools
    from comfy_env import load_tiny_z_image
    from comfy_xdit_patch.bench_models import MODELS, z_image_conditioning
    spec = dataclasses.replace(MODELS["z-image"], conditioning=functools.partial(z_image_conditioning,
                                                                                 dict(text_dim=64)))
    return spec, load_tiny_z_image()


def test_the_main_job_times_a_z_image_shaped_model_on_cpu_ranks_at_turbos_cfg(monkeypatch, capsys):
    """``bench --model z-image`` with the tiny Z-Image and the registry's conditioning (the encoder's all-ones mask) at
    its width: cfg 1, one row a call, the caption and the image, each padded to 32 tokens, split over 2 CPU ranks
    (Ulysses, 3 heads each) within float32 rounding of 1 rank."""
    from comfy_xdit_patch import bench, bench_models
    spec, model = _tiny_z_image()
    layer_inputs = set()
    # Rank 0's first main layer: the whole joint sequence on 1 device, half of it on 2 ranks.
    model.model.diffusion_model.layers[0].register_forward_pre_hook(
        lambda layer, inputs: layer_inputs.add(tuple(inputs[0].shape[:2])))
    monkeypatch.setitem(bench_models.MODELS, "z-image", spec)
    monkeypatch.setattr(bench, "load_random_model", lambda *args, **kwargs: model)
    [row] = bench.main(["--cpu", "--model", "z-image", "--res", "128", "--steps", "2", "--e2e-steps", "0"])
    assert layer_inputs == {(1, 96 + 64), (1, 80)}, layer_inputs
    assert row["layout"] == "2 CPU ranks (ulysses 2 x ring 1)" and row["tokens"] == 96 + 64
    assert row["err"] <= 1e-5, row["err"]
    assert "random Z-Image-Turbo-size NextDiT, cfg 1," in capsys.readouterr().out


def test_the_minimax_h3_weights_are_detected_as_minimax_h3_at_full_size():
    """ComfyUI's detection rebuilds MiniMax H3 from the shapes: 50 blocks of 56 heads of 128 over a residual stream of
    5376, a 2-block token refiner over Qwen3-VL-32B's 5120-wide text. A clip's latent is what ComfyUI's empty-latent
    node makes (33 frames snap up to 39: 12 latent frames and 65 of audio), its tokens the length of the sequence
    ComfyUI's model packs (text, audio, video patches); the text is tagged as text."""
    import torch
    from comfy.ldm.minimax.model import PackedLayout
    from comfy_extras.nodes_minimax_h3 import EmptyMiniMaxH3LatentAV
    from comfy_xdit_patch.bench_models import MODELS
    state, config, model = _meta_model("minimax-h3")
    minimax = model.diffusion_model
    attention = minimax.blocks[0].attn
    assert type(config).__name__ == "MiniMaxH3" and type(model).__name__ == "MiniMaxH3"
    assert (len(minimax.blocks), attention.heads, attention.head_dim, minimax.hidden_size) == (50, 56, 128, 5376)
    assert minimax.condition_proj.in_features == 5120 and len(minimax.token_refiner.blocks) == 2
    assert (minimax.latents_dim, minimax.audio_latents_dim, minimax.patch_size) == (24, 32, (1, 2, 2))
    assert state["video_patch_proj.weight"].dtype == torch.float32 and state["rope.inv_freq"].shape == (16,)
    spec = MODELS["minimax-h3"]
    clip = spec.resolution("832x480", 33)
    video, audio = EmptyMiniMaxH3LatentAV.execute(832, 480, 33).result[0]["samples"].unbind()
    assert spec.latent_size(clip) == tuple(video.shape[2:]) == (12, 30, 52)
    assert spec.tokens(clip, 256) == PackedLayout(256, *video.shape[2:], audio.shape[-1]).seq_len
    assert [t.shape for t in spec.empty_latent(spec.latent_size(clip)).unbind()] == [video.shape, audio.shape]
    assert spec.latent_channels == video.shape[1] == 24
    [[context, extra]] = spec.conditioning(spec.text_tokens, 1, (480, 832))
    assert context.shape == (1, 256, 5120) and extra["pooled_output"] is None and spec.cfg > 1
    assert torch.equal(extra["minimax_token_tags"], torch.ones(256, dtype=torch.long))


def test_a_minimax_h3_shaped_model_samples_its_video_and_audio_latent_with_its_conditioning(monkeypatch):
    """The MiniMax H3 builder at a reduced size (4 heads of 32 over 96, RoPE inverse frequencies, not random values),
    through ComfyUI's loader and sampler with the registry's latent and conditioning: ComfyUI's empty-latent node's
    video and audio, one packed sequence of text, audio and video patches, cond and uncond in two calls (cfg 8), the
    result both streams packed."""
    import dataclasses
    import functools
    import torch
    from comfy_xdit_patch import bench
    from comfy_xdit_patch.bench_models import MODELS, VideoSize, minimax_conditioning, random_minimax_state_dict
    small = dict(hidden=96, heads=4, head_dim=32, layers=2, refiner_layers=2, ffn_dim=192, text_dim=64, rope_freqs=4)
    spec = dataclasses.replace(MODELS["minimax-h3"], state_dict=functools.partial(random_minimax_state_dict, small),
                               conditioning=functools.partial(minimax_conditioning, small))
    model = bench.load_random_model(spec, torch.float32, torch.device("cpu"))
    minimax = model.model.diffusion_model
    assert type(model.model).__name__ == "MiniMaxH3" and minimax.blocks[0].attn.heads == 4
    assert torch.allclose(minimax.rope.inv_freq, 10000.0 ** -(torch.arange(4) / 4))
    latents, sequences = [], []
    run_sampler = bench.run_sampler

    def recorded(model, latent, *args, **kwargs):
        latents.append([tuple(t.shape) for t in latent.unbind()])
        return run_sampler(model, latent, *args, **kwargs)

    monkeypatch.setattr(bench, "run_sampler", recorded)
    minimax.blocks[0].register_forward_pre_hook(lambda block, inputs: sequences.append(inputs[0].shape))
    clip = VideoSize(96, 64, 5)
    out, _, _ = bench.sample(model, spec.latent_size(clip), 1, 7, torch.device("cpu"), spec=spec)
    assert latents == [[(1, 24, 2, 4, 6), (1, 32, 2, 8)]]
    assert sequences == [(spec.tokens(clip, 7), 96)] * 2 and spec.tokens(clip, 7) == 7 + 16 + 12
    assert out.shape == (1, 1, 24 * 2 * 4 * 6 + 32 * 2 * 8) and torch.isfinite(out).all()


def test_passthrough_of_a_minimax_h3_shaped_model_is_bit_identical(monkeypatch):
    """``--passthrough --model minimax-h3`` at a reduced size: the node's hooks pass every call through, and both
    streams of every round's result equal the unpatched model's bit for bit."""
    import dataclasses
    import functools
    from comfy_xdit_patch import bench, bench_models
    from comfy_xdit_patch.runtime import helper_group as helpers
    helpers.shutdown_group()
    small = dict(hidden=96, heads=4, head_dim=32, layers=2, refiner_layers=2, ffn_dim=192, text_dim=64, rope_freqs=4)
    monkeypatch.setitem(bench_models.MODELS, "minimax-h3", dataclasses.replace(
        bench_models.MODELS["minimax-h3"], state_dict=functools.partial(bench_models.random_minimax_state_dict, small),
        conditioning=functools.partial(bench_models.minimax_conditioning, small)))
    rows = bench.main(["--cpu", "--model", "minimax-h3", "--passthrough", "--frames", "5", "--res", "96x64", "--steps",
                       "2", "--warmup", "1", "--repeat", "2"])
    assert [row["tokens"] for row in rows] == [77 + 16 + 12] * 3
    assert helpers.current_group() is None
    assert all(row["identical"] and row["max_diff"] == 0.0 for row in rows), rows
