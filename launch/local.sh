#!/usr/bin/env bash
# Start N pirl processes on this machine that form one multi-process JAX job (for testing).
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: launch/local.sh --num-processes N [--devices-per-process D] [--port P] [--logs DIR] [--dry-run] -- <pirl command ...>

Each process gets PIRL_COORDINATOR_ADDRESS=127.0.0.1:P, PIRL_NUM_PROCESSES=N, PIRL_PROCESS_ID=i
(read by pirl.distributed) and D fake CPU devices; process i logs to DIR/process-i.log.

Example:
  launch/local.sh --num-processes 2 --devices-per-process 2 -- python -m pirl.train pi0_demo_cpu --mesh.axis-sizes -1 1
USAGE
}
NUM="" DEVICES=1 PORT=12355 LOGS="runs/local-logs" DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num-processes) NUM="$2"; shift 2 ;;
    --devices-per-process) DEVICES="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --logs) LOGS="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$NUM" && "$NUM" -ge 1 ]] || { echo "error: --num-processes N (N >= 1) is required (see --help)" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "error: give the command to run after -- (see --help)" >&2; exit 2; }
[[ $DRY -eq 1 ]] || mkdir -p "$LOGS"
PIDS=()
for ((i = 0; i < NUM; i++)); do
  ENV=(env PIRL_COORDINATOR_ADDRESS="127.0.0.1:$PORT" PIRL_NUM_PROCESSES="$NUM" PIRL_PROCESS_ID="$i"
       JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES")
  if [[ $DRY -eq 1 ]]; then
    printf '%q ' "${ENV[@]}" "$@"; printf '> %q 2>&1 &\n' "$LOGS/process-$i.log"
  else
    "${ENV[@]}" "$@" >"$LOGS/process-$i.log" 2>&1 &
    PIDS+=($!)
  fi
done
[[ $DRY -eq 1 ]] && exit 0
STATUS=0
for pid in "${PIDS[@]}"; do wait "$pid" || STATUS=$?; done
echo "all $NUM processes finished (status $STATUS); logs in $LOGS"
exit $STATUS
