#!/usr/bin/env bash
# Prints the ComfyUI checkout the tests run against, or fails (exit 1) naming every place it looked. In order:
#   1. $COMFYUI_PATH, when set (then it must hold ComfyUI: a wrong explicit path is an error, never passed over);
#   2. the ComfyUI this plugin sits in (<ComfyUI>/custom_nodes/<this repository>);
#   3. /opt/ComfyUI, the CI image's checkout (COMFY_XDIT_DEFAULT_COMFYUI names another).
# A folder is ComfyUI when it holds comfy/model_patcher.py.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
default=${COMFY_XDIT_DEFAULT_COMFYUI:-/opt/ComfyUI}
is_comfyui() { [ -n "$1" ] && [ -f "$1/comfy/model_patcher.py" ]; }

if [ -n "${COMFYUI_PATH:-}" ]; then
  if is_comfyui "$COMFYUI_PATH"; then
    (cd "$COMFYUI_PATH" && pwd)
    exit 0
  fi
  cat >&2 <<MSG
FAIL: COMFYUI_PATH='$COMFYUI_PATH' holds no ComfyUI (no comfy/model_patcher.py there).
Point it at a ComfyUI checkout: COMFYUI_PATH=/path/to/ComfyUI bash .ci/run
See the README's "Tests" section.
MSG
  exit 1
fi
parent=$(cd "$here/../.." && pwd)
for candidate in "$parent" "$default"; do
  if is_comfyui "$candidate"; then
    (cd "$candidate" && pwd)
    exit 0
  fi
done
cat >&2 <<MSG
FAIL: ComfyUI not found. The tests run the real ComfyUI (0.33 or newer) and never skip without it. Tried:
  1. \$COMFYUI_PATH (not set)
  2. $parent (the ComfyUI this plugin would sit in, as <ComfyUI>/custom_nodes/$(basename "$here"))
  3. $default
Point it elsewhere with: COMFYUI_PATH=/path/to/ComfyUI bash .ci/run
See the README's "Tests" section.
MSG
exit 1
