# shellcheck shell=bash
# probe NAME SECONDS ENV... -- ARGS...: run `python3 -m ARGS` with stacks on SIGUSR1; if it is still running after
# SECONDS, record GPU state, dump every plugin process's stacks and kill them all. Output: $OUT/NAME.log
probe() {
  local name=$1 limit=$2 envs=() pid
  shift 2
  while [[ $# -gt 0 && $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" python3 tools/run_with_stacks.py "$@" >"$OUT/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq "$limit"); do sleep 1; kill -0 "$pid" 2>/dev/null || break; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "=== HUNG after $limit s" >>"$OUT/$name.log"
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv >>"$OUT/$name.log"
    pkill -USR1 -f 'tools/run_with_stacks.py|comfy_xdit_patch.runtime.helper'; sleep 3
    pkill -9 -f 'tools/run_with_stacks.py|comfy_xdit_patch.runtime.helper'; sleep 2
  else
    wait "$pid"; echo "=== exit $?" >>"$OUT/$name.log"
  fi
}
