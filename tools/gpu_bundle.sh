#!/usr/bin/env bash
# Build the ignored folder .gpu/ that travels with the work tree to an offline GPU machine
# (no network there; the tree and the carried folders may take 64 MiB together):
#   .gpu/ComfyUI/  trimmed copy of ComfyUI (no tests, blueprints, big tokenizer data)
#   .gpu/whl/      cp312 manylinux wheels the GPU image lacks (comfy_kitchen repacked w/o HIP)
#   .gpu/stubs/    import-only stand-in for PyAV (av, ~35 MB, is imported at module level by
#                  comfy_api but never used for image diffusion); gpu_env.sh uses it only if
#                  no real av is importable.
# Run it on a machine with PyPI access; idempotent: downloaded wheels are cached in
# $GPU_BUNDLE_CACHE and reused. Usage: bash tools/gpu_bundle.sh
# Env: COMFYUI_SRC (default /opt/ComfyUI), GPU_BUNDLE_CACHE (default ~/.cache/gpu_bundle),
#      GPU_BUNDLE_AV=1 to ship the real av wheel instead of the stub (too big for 64 MiB!),
#      GPU_BUNDLE_CHECK_PY=/path/to/python (with torch) to run an import check of the copy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${COMFYUI_SRC:-/opt/ComfyUI}"
OUT="$ROOT/.gpu"
CACHE="${GPU_BUNDLE_CACHE:-$HOME/.cache/gpu_bundle}"
# Wheels to ship, pinned so re-runs find them in the cache (versions as ComfyUI 0.33 wants).
SPECS=(
  comfy-kitchen==0.2.31
  comfy-aimdo==0.4.13
  torchsde==0.2.6
  trampoline==0.1.2
  simpleeval==1.0.8
  blake3==1.0.11
  yunchang==0.6.4
)
[[ "${GPU_BUNDLE_AV:-0}" == 1 ]] && SPECS+=(av==19.0.2)

[[ -f "$SRC/nodes.py" && -f "$SRC/comfyui_version.py" ]] || { echo "no ComfyUI at $SRC" >&2; exit 1; }

# --- keep .gpu/ out of git -------------------------------------------------------------
EXCL="$(git -C "$ROOT" rev-parse --git-path info/exclude)"
[[ "$EXCL" = /* ]] || EXCL="$ROOT/$EXCL"
mkdir -p "$(dirname "$EXCL")"
touch "$EXCL"
grep -qxF '/.gpu/' "$EXCL" || echo '/.gpu/' >>"$EXCL"

mkdir -p "$OUT" "$CACHE"

# --- trimmed ComfyUI copy (rebuilt from scratch each run: it only takes a second) -------
rm -rf "$OUT/ComfyUI"
cp -a "$SRC" "$OUT/ComfyUI"
(
  cd "$OUT/ComfyUI"
  # not needed to run: tests, workflow blueprints (4 MB; absence is handled), CI, API spec
  rm -rf tests tests-unit blueprints .github .ci openapi.yaml
  find . -name __pycache__ -type d -prune -exec rm -rf {} +
  find . -name '*.pyc' -delete
  # big tokenizer/vocab/merges data (> 100 kB) under comfy/; only text-encoder tokenizers
  # read them, when a CLIP/T5/Qwen model is loaded. Small *.json model configs stay.
  find comfy -type f ! -name '*.py' -size +100k -print -delete | sed 's/^/  removed /'
)

# --- wheels -----------------------------------------------------------------------------
PLATS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
       manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux1_x86_64)
PLAT_ARGS=()
for p in "${PLATS[@]}"; do PLAT_ARGS+=(--platform "$p"); done

# wheel file in $CACHE for "name==version", or empty
cached_wheel() {
  local name="${1%%==*}" ver="${1##*==}"
  name="$(echo "$name" | tr '-' '_')"
  compgen -G "$CACHE/${name}-${ver}-*.whl" | head -n1 || true
}

mkdir -p "$OUT/whl"
WANT=()
for spec in "${SPECS[@]}"; do
  whl="$(cached_wheel "$spec")"
  if [[ -z "$whl" ]]; then
    echo "downloading $spec"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLAT_ARGS[@]}" -d "$CACHE" "$spec"
    whl="$(cached_wheel "$spec")"
    [[ -n "$whl" ]] || { echo "no wheel for $spec" >&2; exit 1; }
  fi
  dst="$OUT/whl/$(basename "$whl")"
  WANT+=("$(basename "$whl")")
  case "$(basename "$whl")" in
    comfy_kitchen-*)
      # drop the ROCm/HIP extension (~10 MB compressed; comfy_kitchen imports it only on
      # ROCm torch builds) and its RECORD line, so the wheel stays valid
      [[ -f "$dst" && "$dst" -nt "$whl" ]] && continue
      echo "repacking $(basename "$whl") without backends/hip/_C.abi3.so"
      python3 - "$whl" "$dst.tmp" <<'PY'
import sys, zipfile
src, dst = sys.argv[1:3]
DROP = "comfy_kitchen/backends/hip/_C.abi3.so"
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zo:
    for info in zi.infolist():
        if info.filename == DROP:
            continue
        data = zi.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not l.startswith(DROP.encode() + b","))
        zo.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
PY
      mv "$dst.tmp" "$dst"
      ;;
    *) cmp -s "$whl" "$dst" || cp "$whl" "$dst" ;;
  esac
done
# drop wheels of other versions left in .gpu/whl
for f in "$OUT"/whl/*; do
  [[ " ${WANT[*]} " == *" $(basename "$f") "* ]] || { echo "removing stale $f"; rm -rf "$f"; }
done

# verify every wheel: zip integrity and RECORD matching the members ...
python3 - "$OUT/whl" <<'PY'
import sys, zipfile, pathlib
ws = sorted(pathlib.Path(sys.argv[1]).glob("*.whl"))
for w in ws:
    with zipfile.ZipFile(w) as z:
        bad = z.testzip()
        assert bad is None, f"{w.name}: corrupt member {bad}"
        names = {n for n in z.namelist() if not n.endswith("/")}
        rec = next(n for n in names if n.endswith(".dist-info/RECORD"))
        listed = {l.split(",")[0] for l in z.read(rec).decode().splitlines() if l}
        assert listed == names, f"{w.name}: RECORD mismatch {sorted(listed ^ names)[:5]}"
print(f"{len(ws)} wheels: zip + RECORD ok")
PY
# ... and that they install offline as on the GPU machine (target tags forced to cp312
# manylinux so this also works from another local Python version)
TMPT="$(mktemp -d)"
trap 'rm -rf "$TMPT"' EXIT
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: \
  --python-version 3.12 --implementation cp "${PLAT_ARGS[@]}" --target "$TMPT/site" "$OUT"/whl/*.whl
[[ ! -e "$TMPT/site/comfy_kitchen/backends/hip/_C.abi3.so" && -f "$TMPT/site/comfy_kitchen/backends/cuda/_C.abi3.so" ]] \
  || { echo "comfy_kitchen repack is wrong" >&2; exit 1; }
echo "offline install test ok: $(ls "$TMPT/site" | grep -c dist-info) dists"
rm -rf "$TMPT/site"

# --- av stub ----------------------------------------------------------------------------
rm -rf "$OUT/stubs"
mkdir -p "$OUT/stubs/av"
cat >"$OUT/stubs/av/__init__.py" <<'PY'
"""Import-only stand-in for PyAV ("av"), written by tools/gpu_bundle.sh.

ComfyUI's comfy_api imports av (and av.container, av.video.reformatter, ...) at module
level, but image diffusion never calls it. Every av.* submodule and attribute resolves
to a placeholder class; instantiating/calling one raises RuntimeError.
"""
import importlib.abc
import importlib.machinery
import sys
import types

IS_STUB = True
__version__ = "0.0.0+stub"
_MSG = "PyAV (av) is not installed on this machine (import-only stub); video/audio IO is unavailable"


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _StubMeta(name, (cls,), {"__module__": cls.__module__,
                                        "__qualname__": f"{cls.__qualname__}.{name}"})
        type.__setattr__(cls, name, sub)
        return sub

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(_MSG)


class _Stub(Exception, metaclass=_StubMeta):
    """Base of all placeholders (an Exception so `except av.error.X:` clauses work)."""


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "open":
            def open(*args, **kwargs):
                raise RuntimeError(_MSG)
            setattr(self, name, open)
            return open
        sub = _StubMeta(name, (_Stub,), {"__module__": self.__name__, "__qualname__": name})
        setattr(self, name, sub)
        return sub


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


sys.meta_path.append(_Finder())
sys.modules[__name__].__class__ = _StubModule
PY

# --- optional import check of the trimmed copy (needs a python with torch) --------------
if [[ -n "${GPU_BUNDLE_CHECK_PY:-}" ]]; then
  (cd "$ROOT" && PYTHONPATH="$OUT/stubs${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_PATH="$OUT/ComfyUI" \
    "$GPU_BUNDLE_CHECK_PY" -c "import sys; sys.path.insert(0, '$OUT/ComfyUI'); import comfy.options; comfy.options.enable_args_parsing(); sys.argv=['x','--cpu']; import comfy.cli_args; import nodes, comfy.sd, execution; print('import check ok')")
  find "$OUT/ComfyUI" -name __pycache__ -type d -prune -exec rm -rf {} +
fi

# --- sizes ------------------------------------------------------------------------------
echo "--- bundle sizes"
du -sh --apparent-size "$OUT/ComfyUI" "$OUT/whl" "$OUT/stubs"
ls -l "$OUT/whl" | awk 'NR>1 {printf "  %9d  %s\n", $5, $9}'
TOTAL=$(du -sb "$OUT" | cut -f1)
REPO=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1)
echo "total .gpu: $((TOTAL / 1024 / 1024)) MiB ($TOTAL bytes); work tree: $((REPO / 1024)) KiB"
if (( TOTAL + REPO > 62 * 1024 * 1024 )); then
  echo "WARNING: .gpu + work tree exceed 62 MiB; the transfer limit is 64 MiB" >&2
fi
