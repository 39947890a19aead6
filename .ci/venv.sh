#!/usr/bin/env bash
# Builds (once) and prints the path of a virtual environment that imports all of ComfyUI on the CPU plus what
# the tests need. It lives outside the clone, keyed by a hash of every requirement, so CI on a fresh clone reuses it
# and a new machine rebuilds it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
comfy=${COMFYUI_PATH:-/opt/ComfyUI}
if [ ! -f "$comfy/comfy/model_patcher.py" ] || [ ! -f "$comfy/requirements.txt" ]; then
  echo "ComfyUI was not found at '$comfy'. Set COMFYUI_PATH to a ComfyUI 0.33 checkout (see README, 'Tests')." >&2
  exit 1
fi
# torch, torchvision and torchaudio are pinned in the same pip command as ComfyUI's requirements: otherwise a
# dependency pulls an unpinned CUDA torch. The templates/docs packages are not needed; the frontend is (the panel test
# loads the real ComfyUI page).
torch_pins="torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1"
filtered=$(grep -vE '^(comfyui-workflow-templates|comfyui-embedded-docs|torch|torchvision|torchaudio)([<>=~ ]|$)' "$comfy/requirements.txt")
key=$( { python3 --version; echo "$torch_pins"; echo "$filtered"; cat "$here/tests/requirements.txt"; } | sha256sum | cut -c1-16)
venv=${COMFY_XDIT_VENV:-/opt/comfy-xdit-venv/$key}
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "Building the test venv at $venv (a few minutes, once per machine)..." >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q $torch_pins -r <(echo "$filtered") -r "$here/tests/requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv"
