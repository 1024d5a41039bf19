#!/usr/bin/env bash
# Submit a pirl command to SLURM on N GPU nodes (wraps launch/slurm.sbatch).
set -euo pipefail
usage() {
  cat <<'USAGE'
Usage: launch/slurm.sh --nodes N [--gpus-per-node G] [--partition P] [--time HH:MM:SS] [--dry-run] -- <pirl command ...>

Installs the checkout from uv.lock once (on the submit host; the run directory must be on a shared
file system), then submits launch/slurm.sbatch with one process per node.

Example:
  launch/slurm.sh --nodes 2 --gpus-per-node 8 -- python -m pirl.train pi0_libero_ppo --mesh gpu-2x8 --init-checkpoint /ckpt
USAGE
}
NODES="" GPUS=8 PARTITION="" TIME="" DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --gpus-per-node) GPUS="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$NODES" ]] || { echo "error: --nodes is required (see --help)" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "error: give the command to run after -- (see --help)" >&2; exit 2; }
HERE="$(cd "$(dirname "$0")" && pwd)"
CMD=(sbatch --nodes="$NODES" --gpus-per-node="$GPUS")
[[ -n "$PARTITION" ]] && CMD+=(--partition="$PARTITION")
[[ -n "$TIME" ]] && CMD+=(--time="$TIME")
CMD+=("$HERE/slurm.sbatch" "$@")
if [[ $DRY -eq 1 ]]; then
  printf '%q ' uv sync --frozen; printf '\n'
  printf '%q ' "${CMD[@]}"; printf '\n'
else
  uv sync --frozen
  "${CMD[@]}"
fi
