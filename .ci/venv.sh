#!/usr/bin/env bash
# Builds (once) and prints the path of a virtual environment that imports all of ComfyUI on the CPU plus what
# the tests need. It lives outside the clone, keyed by a hash of every requirement, so CI on a fresh clone reuses it
# and a new machine rebuilds it. Concurrent calls wait for one build (a lock beside the venv) instead of deleting
# each other's half-built environment.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
comfy=$(bash "$here/.ci/find_comfyui.sh")
if [ ! -f "$comfy/requirements.txt" ]; then
  echo "FAIL: ComfyUI at '$comfy' has no requirements.txt; point COMFYUI_PATH at a full ComfyUI checkout" \
       "(README: 'Tests')." >&2
  exit 1
fi
# torch, torchvision and torchaudio are pinned in the same pip command as ComfyUI's requirements: otherwise a
# dependency pulls an unpinned CUDA torch. The templates/docs packages are not needed; the frontend is (the panel test
# loads the real ComfyUI page).
torch_pins="torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1"
filtered=$(grep -vE '^(comfyui-workflow-templates|comfyui-embedded-docs|torch|torchvision|torchaudio)([<>=~ ]|$)' \
  "$comfy/requirements.txt")
key=$( { python3 --version; echo "$torch_pins"; echo "$filtered"; cat "$here/tests/requirements.txt"; } \
  | sha256sum | cut -c1-16)
venv=${COMFY_XDIT_VENV:-/opt/comfy-xdit-venv/$key}
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "Building the test venv at $venv (a few minutes, once per machine)..." >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q $torch_pins -r <(echo "$filtered") -r "$here/tests/requirements.txt" >&2
  touch "$venv/.complete"
fi
flock -u 9
echo "$venv"
