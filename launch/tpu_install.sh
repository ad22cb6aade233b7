#!/usr/bin/env bash
# Installs nasfpn_tf on every worker of the TPU VM(s): a Python 3.11
# virtualenv (VENV, in the remote home) with the project's wheel, then
# TensorFlow's TPU build in place of the CPU one pip pulled in.
#
# Usage: launch/tpu_install.sh [--dry-run] [--help] [--SETTING=VALUE ...]
#
# Settings, from the environment or as flags (--tpu-name=... sets TPU_NAME):
#   TPU_NAME   required; with NUM_TPUS > 1 the VMs are TPU_NAME-0 ..
#   ZONE       required
#   PROJECT    required
#   NUM_TPUS   how many TPU VMs tpu_create.sh made (default 1)
#   PACKAGE    pip requirement to install instead of a wheel built from this
#              checkout, e.g. git+https://HOST/OWNER/nasfpn_tf@v0.1.0
#   TPU_TF     TensorFlow's TPU build (default tensorflow-tpu==2.20.*)
#   VENV       remote virtualenv (default nasfpn-venv)
#   DRY_RUN    1 to print the commands instead of running them
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "TPU_NAME ZONE PROJECT NUM_TPUS PACKAGE TPU_TF VENV" "$@"
: "${TPU_TF:=tensorflow-tpu==2.20.*}"
require TPU_NAME ZONE PROJECT
tpu_names

package="${PACKAGE:-}"
if [[ -z "$package" ]]; then
  build_wheel
  package="./$(basename "$WHEEL")"
fi
# tensorflow-tpu ships the same `tensorflow` package as the CPU wheel that
# tf-models-official depends on, so the CPU one goes; the forced reinstall
# restores files that a rerun's CPU install and uninstall took away.
command="$(install_cmd "$package" "uninstall -q -y tensorflow" \
  "install -q $TPU_TF" "install -q --force-reinstall --no-deps $TPU_TF")"
for name in "${TPUS[@]}"; do
  [[ -n "${PACKAGE:-}" ]] || tpu_scp "$name" "$WHEEL"
  tpu_ssh "$name" all "$command"
done
