# shellcheck shell=bash
# Set up the offline GPU machine for running the plugin against the bundled ComfyUI.
# SOURCE it from the repo root (after tools/gpu_bundle.sh made .gpu/ on a machine with PyPI access):
#     source tools/gpu_env.sh && python3 ...
# It installs .gpu/whl/*.whl into $GPU_SITE (default /tmp/site; skipped when the same
# wheels are already installed there), puts that first on PYTHONPATH, adds the av stub
# (.gpu/stubs) when no real PyAV is importable, exports COMFYUI_PATH and the NCCL /
# symmetric-memory settings that keep NVLink multicast off. Returns non-zero with a
# message when something is missing. GPU_ENV_CHECK=1 also imports ComfyUI as a check.
# The caller's shell options are restored afterwards, so `set -e` does not leak into it.

_gpu_env_saved_opts="$(set +o)"
set -euo pipefail

_gpu_env_setup() {
  local root site whls stamp py
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  site="${GPU_SITE:-/tmp/site}"

  # --- what must be there ---------------------------------------------------------------
  command -v python3 >/dev/null || { echo "gpu_env: python3 not found" >&2; return 1; }
  py="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [[ "$py" == 3.12 ]] || echo "gpu_env: warning: python3 is $py, the bundled wheels are for 3.12" >&2
  [[ -f "$root/.gpu/ComfyUI/nodes.py" ]] \
    || { echo "gpu_env: $root/.gpu/ComfyUI missing; run tools/gpu_bundle.sh where PyPI is reachable and carry .gpu" >&2; return 1; }
  whls=("$root"/.gpu/whl/*.whl)
  [[ -f "${whls[0]}" ]] || { echo "gpu_env: no wheels in $root/.gpu/whl" >&2; return 1; }

  # --- install the wheels (offline), unless this exact set is already in $site -----------
  stamp="$site/.gpu_whl_stamp"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$(stat -c '%n %s' "${whls[@]}")" ]]; then
    mkdir -p "$site"
    PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install -q \
      --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${whls[@]}" \
      || { echo "gpu_env: pip install of .gpu/whl/*.whl into $site failed" >&2; return 1; }
    stat -c '%n %s' "${whls[@]}" >"$stamp"
  fi

  # --- environment ----------------------------------------------------------------------
  case ":${PYTHONPATH:-}:" in
    *":$site:"*) ;;
    *) export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" ;;
  esac
  # PyAV is too big to bundle; ComfyUI only needs it to import (comfy_api), so fall back
  # to the import-only stub when the image has no real av
  if ! python3 -c 'import av' 2>/dev/null; then
    [[ -f "$root/.gpu/stubs/av/__init__.py" ]] \
      || { echo "gpu_env: no av module and no stub in .gpu/stubs" >&2; return 1; }
    case ":$PYTHONPATH:" in
      *":$root/.gpu/stubs:"*) ;;
      *) export PYTHONPATH="$PYTHONPATH:$root/.gpu/stubs" ;;
    esac
  fi
  export COMFYUI_PATH="$root/.gpu/ComfyUI"
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

  # --- check: every bundled/needed module is importable (found, not imported: fast) ----
  python3 - <<'PY' || { echo "gpu_env: modules missing (see above)" >&2; return 1; }
import importlib.util, sys
need = ["torch", "comfy_kitchen", "comfy_aimdo", "torchsde", "trampoline", "simpleeval",
        "blake3", "yunchang", "av", "einops", "safetensors", "transformers", "aiohttp",
        "yaml", "PIL", "scipy", "psutil", "tqdm", "numpy", "requests"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    print("gpu_env: cannot find", " ".join(missing), file=sys.stderr)
    sys.exit(1)
PY
  if [[ "${GPU_ENV_CHECK:-0}" == 1 ]]; then
    (cd "$root" && python3 -c "import sys; sys.path.insert(0, '$COMFYUI_PATH'); import comfy.options; comfy.options.enable_args_parsing(); sys.argv = ['x']; import comfy.cli_args; import nodes, comfy.sd, execution, comfy_kitchen; print('gpu_env: ComfyUI import ok')") \
      || { echo "gpu_env: ComfyUI import check failed" >&2; return 1; }
  fi
  echo "gpu_env: ok (site=$site, COMFYUI_PATH=$COMFYUI_PATH)"
}

if ! (return 0 2>/dev/null); then
  # executed instead of sourced: the exports would be lost
  echo "gpu_env.sh must be sourced: 'source tools/gpu_env.sh' from the repo root" >&2
  eval "$_gpu_env_saved_opts"
  false
else
  if _gpu_env_setup; then _gpu_env_rc=0; else _gpu_env_rc=$?; fi
  eval "$_gpu_env_saved_opts"
  unset -f _gpu_env_setup
  unset _gpu_env_saved_opts
  return "$_gpu_env_rc"
fi
