#!/usr/bin/env bash
# Trains (and evaluates) a detector on a single-host TPU VM:
#   python -m nasfpn_tf.main --mode=train_and_eval --tpu=local
#       --model_dir=gs://... --config_file=... [--arch=best_spec.json]
# The run goes on in the background on the TPU VM, so a dropped connection
# does not stop it; its log streams here until it ends. Rerunning with the
# same MODEL_DIR resumes from the last checkpoint.
#
# Usage: launch/tpu_train.sh [--dry-run] [--help] [--SETTING=VALUE ...]
#
# Settings, from the environment or as flags (--tpu-name=... sets TPU_NAME):
#   TPU_NAME         required, a TPU VM made by tpu_create.sh
#   ZONE             required
#   PROJECT          required
#   MODEL_DIR        required, gs://BUCKET/RUN (checkpoints, metrics.jsonl)
#   CONFIG_FILES     required, space-separated YAML files, later wins,
#                    e.g. "configs/nasfpn_r50_640.yaml"; local files are
#                    copied to the TPU VM, gs:// paths passed as they are
#   ARCH             spec JSON to train, e.g. results/RUN/best_spec.json
#   PARAMS_OVERRIDE  extra overrides, a list like train.batch_size=64
#   MODE             train_and_eval (default), train, eval, or supernet
#                    (trains the search's shared-weight supernet at the
#                    proxy's sizes; point search.supernet.path at it)
#   FOLLOW           0 to start the run without streaming its log
#   REMOTE_ENV       VAR=VALUE words set for the remote process
#   DRY_RUN          1 to print the commands instead of running them
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "TPU_NAME ZONE PROJECT MODEL_DIR CONFIG_FILES ARCH PARAMS_OVERRIDE \
MODE FOLLOW REMOTE_ENV VENV" "$@"
: "${MODE:=train_and_eval}"
: "${FOLLOW:=1}"
require_bool FOLLOW
require TPU_NAME ZONE PROJECT MODEL_DIR CONFIG_FILES
require_gcs MODEL_DIR
case "$MODE" in
  train | eval | train_and_eval | supernet) ;;
  *) die "MODE must be train, eval, train_and_eval or supernet, got '$MODE'" ;;
esac
stage_inputs

log="nasfpn-$MODE"
# --tpu=local also selects runtime.strategy=tpu.
command="$(main_cmd "$MODE" "") --tpu=local"
((${#STAGE_FILES[@]} == 0)) || tpu_scp "$TPU_NAME" "${STAGE_FILES[@]}"
tpu_ssh "$TPU_NAME" 0 "$(detached "$command" "$log")"
! is_on FOLLOW || tpu_ssh "$TPU_NAME" 0 "$(follow "$log")"
