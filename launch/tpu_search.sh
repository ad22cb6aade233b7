#!/usr/bin/env bash
# Runs the architecture search on a fleet of single-host TPU VMs with
# KerasTuner's chief/worker mode: TPU_NAME-0 runs the chief, which holds the
# oracle (the controller); TPU_NAME-1 .. run the trials as tuner0, tuner1,
# ..., each training proxy children under TPUStrategy (--tpu=local). All of
# them run the same `python -m nasfpn_tf.main --mode=search` and share the
# gs:// MODEL_DIR, where history.jsonl and best_spec.json land. The processes
# run in the background on the TPU VMs; the chief's log streams here.
# Rerunning with the same MODEL_DIR resumes the search.
#
# Usage: launch/tpu_search.sh [--dry-run] [--help] [--SETTING=VALUE ...]
#
# Settings, from the environment or as flags (--tpu-name=... sets TPU_NAME):
#   TPU_NAME         required; the VMs are TPU_NAME-0 .. TPU_NAME-(N-1)
#   ZONE             required
#   PROJECT          required
#   NUM_TPUS         required, at least 2 (one oracle, the rest trials)
#   MODEL_DIR        required, gs://BUCKET/RUN
#   CONFIG_FILES     required, space-separated YAML files, later wins,
#                    e.g. "configs/proxy_search.yaml"
#   PARAMS_OVERRIDE  extra overrides, a list like search.num_samples=100
#   ORACLE_PORT      port of the oracle on TPU_NAME-0 (default 8000)
#   ORACLE_IP        internal IP of TPU_NAME-0 (default: asked of gcloud)
#   FOLLOW           0 to start the search without streaming the log, or
#                    the process to stream: chief (default), tuner0, ...
#   REMOTE_ENV       VAR=VALUE words set for every remote process
#   DRY_RUN          1 to print the commands instead of running them
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "TPU_NAME ZONE PROJECT NUM_TPUS MODEL_DIR CONFIG_FILES \
PARAMS_OVERRIDE ORACLE_PORT ORACLE_IP FOLLOW REMOTE_ENV VENV" "$@"
: "${ORACLE_PORT:=8000}"
: "${FOLLOW:=chief}"
require TPU_NAME ZONE PROJECT NUM_TPUS MODEL_DIR CONFIG_FILES
require_gcs MODEL_DIR
require_int NUM_TPUS 2
require_int ORACLE_PORT 1
((ORACLE_PORT <= 65535)) || die "ORACLE_PORT must be at most 65535, got $ORACLE_PORT"
stage_inputs
tpu_names

# TPUS[0] runs the chief; TPUS[i] runs tuner(i-1).
tuner_ids=(chief)
for ((i = 1; i < NUM_TPUS; i++)); do tuner_ids+=("tuner$((i - 1))"); done
follow_host=""
for i in "${!tuner_ids[@]}"; do
  [[ "$FOLLOW" != "${tuner_ids[$i]}" ]] || follow_host="${TPUS[$i]}"
done
[[ -n "$follow_host" || "$FOLLOW" == 0 ]] ||
  die "FOLLOW must be 0 or one of: ${tuner_ids[*]}; got '$FOLLOW'"

if [[ -z "${ORACLE_IP:-}" ]]; then
  capture ORACLE_IP "ORACLE_IP_OF_${TPUS[0]}" gcloud compute tpus tpu-vm \
    describe "${TPUS[0]}" --zone="$ZONE" --project="$PROJECT" \
    --format='value(networkEndpoints[0].ipAddress)'
fi

log=nasfpn-search
for i in "${!TPUS[@]}"; do
  # Every process gets the same flags, so they all agree on config.yaml in
  # MODEL_DIR; only the KerasTuner variables differ.
  command="$(main_cmd search "" \
    KERASTUNER_TUNER_ID="${tuner_ids[$i]}" \
    KERASTUNER_ORACLE_IP="$ORACLE_IP" \
    KERASTUNER_ORACLE_PORT="$ORACLE_PORT") --tpu=local"
  ((${#STAGE_FILES[@]} == 0)) || tpu_scp "${TPUS[$i]}" "${STAGE_FILES[@]}"
  tpu_ssh "${TPUS[$i]}" 0 "$(detached "$command" "$log")"
done
[[ -z "$follow_host" ]] || tpu_ssh "$follow_host" 0 "$(follow "$log")"
