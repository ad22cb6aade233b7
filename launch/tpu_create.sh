#!/usr/bin/env bash
# Creates the Cloud TPU VM (or a fleet of them) that the other scripts use.
#
# Usage: launch/tpu_create.sh [--dry-run] [--help] [--SETTING=VALUE ...]
#
# Settings, from the environment or as flags (--tpu-name=... sets TPU_NAME):
#   TPU_NAME          required; with NUM_TPUS > 1 the VMs are TPU_NAME-0 ..
#   ZONE              required, e.g. us-central2-b
#   PROJECT           required, the Google Cloud project id
#   ACCELERATOR_TYPE  required, e.g. v4-8 (one host) or v3-8
#   RUNTIME_VERSION   TPU VM image (default tpu-ubuntu2204-base)
#   NUM_TPUS          how many single-host TPU VMs (default 1); a search
#                     needs at least 2: one runs the oracle, the rest trials
#   SPOT              1 to ask for Spot VMs (cheaper, can be preempted)
#   DRY_RUN           1 to print the commands instead of running them
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION NUM_TPUS \
SPOT" "$@"
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
require TPU_NAME ZONE PROJECT ACCELERATOR_TYPE
tpu_names

spot=()
! is_on SPOT || spot=(--spot)
for name in "${TPUS[@]}"; do
  run gcloud compute tpus tpu-vm create "$name" --zone="$ZONE" \
    --project="$PROJECT" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
done
