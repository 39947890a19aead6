#!/usr/bin/env bash
# Eighth session, call 8 (ONE H200, ≤2 min): is the process's first attention call different in torch itself?
# (Call 4: the first prompt's outputs first differ at the first block's attention projection.) A fresh process calls
# scaled_dot_product_attention three times on the same bf16 q, k, v of one FLUX block (24 heads, 4608 tokens), then
# once under each backend forced, and says which backend each unforced call matches.
# Prediction (written before the run): the first call differs from the second and third (which are equal), and
# matches another backend (cuDNN or efficient) than the later calls (flash).
source tools/gpu_env.sh || exit 1
python3 - <<'PY' 2>&1 | tee "$OUT/first-sdpa.log"
import torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(1, 24, 4608, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
calls = [F.scaled_dot_product_attention(q, k, v) for _ in range(3)]
forced = {}
for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
    try:
        with sdpa_kernel(backend):
            forced[backend.name] = F.scaled_dot_product_attention(q, k, v)
    except Exception as e:
        print(backend.name, "unavailable:", type(e).__name__, str(e)[:120])
print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())
print("call 1 == call 2:", torch.equal(calls[0], calls[1]), " call 2 == call 3:", torch.equal(calls[1], calls[2]))
for i, out in enumerate(calls):
    print(f"call {i + 1} matches:", [name for name, ref in forced.items() if torch.equal(out, ref)] or "none",
          " max abs diff to call 3:", (out.float() - calls[2].float()).abs().max().item())
PY
