#!/usr/bin/env bash
# Deletes the Cloud TPU VM(s) made by tpu_create.sh. Results stay in the
# gs:// model_dir; copy what you need with fetch_results.sh.
#
# Usage: launch/tpu_delete.sh [--dry-run] [--help] [--SETTING=VALUE ...]
#
# Settings, from the environment or as flags (--tpu-name=... sets TPU_NAME):
#   TPU_NAME   required; with NUM_TPUS > 1 the VMs are TPU_NAME-0 ..
#   ZONE       required
#   PROJECT    required
#   NUM_TPUS   how many TPU VMs tpu_create.sh made (default 1)
#   DRY_RUN    1 to print the commands instead of running them
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "TPU_NAME ZONE PROJECT NUM_TPUS" "$@"
require TPU_NAME ZONE PROJECT
tpu_names

for name in "${TPUS[@]}"; do
  run gcloud compute tpus tpu-vm delete "$name" --zone="$ZONE" \
    --project="$PROJECT" --quiet
done
