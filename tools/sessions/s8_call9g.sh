#!/usr/bin/env bash
# Eighth session, call 9 (ONE H200, ≤2 min): what the copy-engine exchange's head parts cost on their own: one
# member's attention over the gathered sequence (12 heads of 128, bf16) in 1, 2, 3 and 4 parts, and the pass that
# makes a single block's token-major v head-major, each as a CUDA graph of 8 repeats (median of 10 replays), with
# ComfyUI's backend priority (flash attention first, comfy/ops.py) and with torch's default.
# Prediction (written before the run): at 2048² (16896 tokens) 2–3 parts cost ≤1% more than 1; at 1024² (4608) 2
# parts ≈+3–6%, 3 parts ≈+6–10% (fewer query tiles per launch); the v pass ≈10 / ≈30 µs.
source tools/gpu_env.sh || exit 1
python3 - <<'PY' 2>&1 | tee "$OUT/parts-cost.log"
import statistics, torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
def timed(fn, repeats=8, replays=10):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(repeats): fn()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / repeats)
    return statistics.median(times)
comfy = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
for tokens in (4608, 16896):
    q, k, v = (torch.randn(1, 12, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for name, ctx in (("comfy priority", lambda: sdpa_kernel(comfy, set_priority=True)), ("torch default", None)):
        row = []
        for parts in (1, 2, 3, 4):
            span = 12 // parts
            def fn():
                outs = []
                for p in range(parts):
                    h = slice(p * span, (p + 1) * span)
                    if ctx is None:
                        outs.append(F.scaled_dot_product_attention(q[:, h], k[:, h], v[:, h]))
                    else:
                        with ctx():
                            outs.append(F.scaled_dot_product_attention(q[:, h], k[:, h], v[:, h]))
                return outs
            row.append(timed(fn))
        print(f"{tokens} tokens, {name}: 1/2/3/4 parts " + " / ".join(f"{t:.0f}" for t in row) + " µs, +"
              + " / +".join(f"{100 * (t / row[0] - 1):.1f}%" for t in row[1:]))
    half = tokens // 2
    qkv = torch.randn(1, half, 3, 24, 128, device="cuda", dtype=torch.bfloat16)
    view = qkv.permute(2, 0, 3, 1, 4)[2]
    print(f"{tokens} tokens: v of one member's {half} tokens made head-major: {timed(lambda: view.contiguous()):.1f} µs")
PY
