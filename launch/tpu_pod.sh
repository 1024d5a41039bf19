#!/usr/bin/env bash
# Run a pirl training command on every worker of a Cloud TPU pod slice.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE [options] -- <pirl command ...>

Creates the TPU VM slice (or reuses it), copies this checkout to every worker, installs it from
uv.lock, runs the same command on all workers (JAX's multi-controller runtime: one process per
host; pirl.distributed detects the pod), and copies the logs back.

Options:
  --name NAME            TPU VM name (required)
  --zone ZONE            GCP zone, e.g. us-east5-a (required)
  --accelerator TYPE     e.g. v5p-64, v4-32, v6e-64 (required when creating)
  --version VERSION      TPU software version (default: v2-alpha-tpuv5; v2-alpha-tpuv6e for v6e)
  --project PROJECT      GCP project (default: gcloud's configured project)
  --spot                 create a spot (preemptible) slice
  --remote-dir DIR       code directory on the workers (default: ~/pirl)
  --logs DIR             local directory for the collected logs (default: runs/tpu-logs/NAME)
  --no-create            fail instead of creating the slice when it does not exist
  --dry-run              print the commands instead of running them
  -h, --help             this help

Example:
  launch/tpu_pod.sh --name pirl-v5p --zone us-east5-a --accelerator v5p-64 -- \
      python -m pirl.train pi0_libero_ppo --mesh tpu-v5p-64 --init-checkpoint gs://bucket/ckpt
USAGE
}

NAME="" ZONE="" ACCEL="" VERSION="" PROJECT="" SPOT=0 REMOTE_DIR="~/pirl" LOGS="" CREATE=1 DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCEL="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --remote-dir) REMOTE_DIR="$2"; shift 2 ;;
    --logs) LOGS="$2"; shift 2 ;;
    --no-create) CREATE=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$NAME" && -n "$ZONE" ]] || { echo "error: --name and --zone are required (see --help)" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "error: give the command to run after -- (see --help)" >&2; exit 2; }
if [[ -z "$VERSION" ]]; then
  case "$ACCEL" in v6e-*) VERSION="v2-alpha-tpuv6e" ;; v5p-*) VERSION="v2-alpha-tpuv5" ;; v5litepod-*) VERSION="v2-alpha-tpuv5-lite" ;; *) VERSION="tpu-ubuntu2204-base" ;; esac
fi
LOGS="${LOGS:-runs/tpu-logs/$NAME}"
GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project "$PROJECT")

run() {  # print (dry run) or execute a command, quoting each argument
  if [[ $DRY -eq 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

if [[ $DRY -eq 1 ]] || ! "${GCLOUD[@]}" describe "$NAME" "${COMMON[@]}" >/dev/null 2>&1; then
  if [[ $DRY -eq 0 && $CREATE -eq 0 ]]; then echo "error: TPU $NAME does not exist in $ZONE and --no-create was given" >&2; exit 1; fi
  [[ -n "$ACCEL" ]] || { echo "error: --accelerator is required to create $NAME" >&2; exit 2; }
  CREATE_CMD=("${GCLOUD[@]}" create "$NAME" "${COMMON[@]}" --accelerator-type "$ACCEL" --version "$VERSION")
  [[ $SPOT -eq 1 ]] && CREATE_CMD+=(--spot)
  run "${CREATE_CMD[@]}"
fi

ARCHIVE="/tmp/pirl-$NAME.tar.gz"
run tar --exclude=.venv --exclude=runs --exclude=.git -czf "$ARCHIVE" -C "$(git rev-parse --show-toplevel 2>/dev/null || pwd)" .
run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:/tmp/pirl.tar.gz" "${COMMON[@]}" --worker=all
SETUP="mkdir -p $REMOTE_DIR && tar -xzf /tmp/pirl.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && (command -v uv >/dev/null || python3 -m pip install --user uv) && ~/.local/bin/uv sync --frozen && ~/.local/bin/uv pip install 'jax[tpu]'"
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$SETUP"
printf -v USER_CMD '%q ' "$@"
RUN="cd $REMOTE_DIR && mkdir -p runs && ~/.local/bin/uv run --frozen $USER_CMD 2>&1 | tee runs/worker-\$(hostname).log"
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command "$RUN"
run mkdir -p "$LOGS"
run "${GCLOUD[@]}" scp "$NAME:$REMOTE_DIR/runs/worker-*.log" "$LOGS/" "${COMMON[@]}" --worker=all
