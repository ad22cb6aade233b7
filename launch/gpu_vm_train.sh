#!/usr/bin/env bash
# Trains on one multi-GPU Compute Engine VM under MirroredStrategy, start to
# end: creates the VM, installs nasfpn_tf in a Python 3.11 virtualenv,
# runs
#   python -m nasfpn_tf.main --mode=train_and_eval --model_dir=gs://...
#       --config_file=... --params_override=runtime.strategy=mirrored
# with its log streaming here, and deletes the VM when the run ends or
# fails (KEEP_VM=1 keeps it). Everything the run writes is in MODEL_DIR, so
# rerunning with the same MODEL_DIR resumes from the last checkpoint.
#
# Usage: launch/gpu_vm_train.sh [--dry-run] [--help] [--SETTING=VALUE ...]
#
# Settings, from the environment or as flags (--vm-name=... sets VM_NAME):
#   VM_NAME          required, the VM to create
#   ZONE             required, one that has the GPUs asked for
#   PROJECT          required
#   MODEL_DIR        required, gs://BUCKET/RUN
#   CONFIG_FILES     required, space-separated YAML files, later wins
#   ARCH             spec JSON to train, e.g. results/RUN/best_spec.json
#   PARAMS_OVERRIDE  extra overrides, a list like train.batch_size=32
#   MODE             train_and_eval (default), train or eval
#   MACHINE_TYPE     default n1-standard-16
#   ACCELERATOR      default type=nvidia-tesla-v100,count=4; set it empty
#                    for machine types that come with GPUs (a2-, g2-)
#   IMAGE_FAMILY     Deep Learning VM image with the NVIDIA driver, Ubuntu
#                    22.04 (default common-cu128-ubuntu-2204-nvidia-570)
#   IMAGE_PROJECT    default deeplearning-platform-release
#   BOOT_DISK_SIZE   default 200GB
#   PACKAGE          pip requirement to install instead of a wheel built
#                    from this checkout
#   GPU_TF           TensorFlow with its CUDA libraries
#                    (default tensorflow[and-cuda]==2.20.*)
#   KEEP_VM          1 to keep the VM afterwards
#   REMOTE_ENV       VAR=VALUE words set for the remote process
#   DRY_RUN          1 to print the commands instead of running them
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "VM_NAME ZONE PROJECT MODEL_DIR CONFIG_FILES ARCH PARAMS_OVERRIDE \
MODE MACHINE_TYPE ACCELERATOR IMAGE_FAMILY IMAGE_PROJECT BOOT_DISK_SIZE \
PACKAGE GPU_TF KEEP_VM REMOTE_ENV VENV" "$@"
: "${MODE:=train_and_eval}"
: "${MACHINE_TYPE:=n1-standard-16}"
: "${ACCELERATOR=type=nvidia-tesla-v100,count=4}"
: "${IMAGE_FAMILY:=common-cu128-ubuntu-2204-nvidia-570}"
: "${IMAGE_PROJECT:=deeplearning-platform-release}"
: "${BOOT_DISK_SIZE:=200GB}"
: "${GPU_TF:=tensorflow[and-cuda]==2.20.*}"
: "${KEEP_VM:=0}"
require VM_NAME ZONE PROJECT MODEL_DIR CONFIG_FILES
require_gcs MODEL_DIR
case "$MODE" in
  train | eval | train_and_eval) ;;
  *) die "MODE must be train, eval or train_and_eval, got '$MODE'" ;;
esac
require_bool KEEP_VM
stage_inputs

package="${PACKAGE:-}"
if [[ -z "$package" ]]; then
  build_wheel
  package="./$(basename "$WHEEL")"
fi
# Both remote command lines are made first, so that a bad setting fails
# before the VM exists.
install_command="$(install_cmd "$package" "install -q $GPU_TF")"
train_command="$(main_cmd "$MODE" runtime.strategy=mirrored)"
at=(--zone="$ZONE" --project="$PROJECT")
accelerator=()
[[ -z "$ACCELERATOR" ]] || accelerator=(--accelerator="$ACCELERATOR")

# GPU VMs cannot live-migrate, hence TERMINATE; the image installs the
# driver on first boot when asked to.
run gcloud compute instances create "$VM_NAME" "${at[@]}" \
  --machine-type="$MACHINE_TYPE" ${accelerator[@]+"${accelerator[@]}"} \
  --image-family="$IMAGE_FAMILY" --image-project="$IMAGE_PROJECT" \
  --boot-disk-size="$BOOT_DISK_SIZE" --maintenance-policy=TERMINATE \
  --metadata=install-nvidia-driver=True --scopes=cloud-platform

delete_vm() {
  if is_on KEEP_VM; then
    printf 'kept %s; delete it with: gcloud compute instances delete %s\n' \
      "$VM_NAME" "$(join_quoted "$VM_NAME" "${at[@]}")" >&2
  else
    run gcloud compute instances delete "$VM_NAME" "${at[@]}" --quiet
  fi
}
trap delete_vm EXIT
trap 'exit 130' INT TERM # so that the EXIT trap deletes the VM

# The VM takes a while to accept ssh, and the driver to load.
retry 30 gcloud compute ssh "$VM_NAME" "${at[@]}" \
  --command='nvidia-smi --query-gpu=name --format=csv,noheader'
files=(${STAGE_FILES[@]+"${STAGE_FILES[@]}"})
[[ -n "${PACKAGE:-}" ]] || files+=("$WHEEL")
((${#files[@]} == 0)) || run gcloud compute scp "${files[@]}" "$VM_NAME:" \
  "${at[@]}"
run gcloud compute ssh "$VM_NAME" "${at[@]}" --command="$install_command"
run gcloud compute ssh "$VM_NAME" "${at[@]}" --command="$train_command"
