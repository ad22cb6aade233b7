# shellcheck shell=bash
# Helpers shared by the launch scripts; sourced, never run on its own.
#
# Every script parses its flags with `parse_args`, checks its settings with
# `require`, and reaches the cloud only through `run` and `capture`, so that
# `--dry-run` (or DRY_RUN=1) prints each command, prefixed "+ ", one per line
# on stdout, and runs nothing.

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$LAUNCH_DIR")"

# Remote layout: paths are relative to the remote home directory, which is
# where `gcloud ... ssh --command` starts and where `scp NAME:` copies to.
: "${DRY_RUN:=0}"
: "${VENV:=nasfpn-venv}"
: "${REMOTE_PYTHON:=python3.11}"
: "${REMOTE_ENV:=}"
: "${NUM_TPUS:=1}"

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Prints the script's header comment (line 2 up to the first line that is
# not a comment) as its help text.
usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

# parse_args "VAR1 VAR2 ..." "$@": --help, --dry-run, and one flag per
# setting: --tpu-name=X (or --tpu-name X) sets TPU_NAME.
parse_args() {
  local known=" $1 " flag name value var
  shift
  while (($#)); do
    flag="$1"
    shift
    case "$flag" in
      -h | --help)
        usage
        exit 0
        ;;
      --dry-run) DRY_RUN=1 ;;
      --*=*)
        name="${flag%%=*}"
        value="${flag#*=}"
        ;;
      --*)
        (($#)) || die "flag $flag needs a value (see --help)"
        name="$flag"
        value="$1"
        shift
        ;;
      *) die "unexpected argument '$flag' (see --help)" ;;
    esac
    [[ "$flag" == --dry-run ]] && continue
    var="$(printf '%s' "${name#--}" | tr 'a-z-' 'A-Z_')"
    [[ "$known" == *" $var "* ]] || die "unknown flag '$name' (see --help)"
    printf -v "$var" '%s' "$value"
  done
  require_bool DRY_RUN
}

# is_on VAR: whether a yes/no setting is set (1/true/yes vs 0/false/no/"").
is_on() {
  case "${!1:-}" in
    1 | true | yes) return 0 ;;
    0 | false | no | "") return 1 ;;
    *) die "$1 must be 1 or 0, got '${!1}'" ;;
  esac
}

is_dry_run() { is_on DRY_RUN; }

# require_bool VAR: fails now, not halfway, on a value is_on refuses.
require_bool() { is_on "$1" || :; }

# require VAR...: fails naming every empty one, with the flag that sets it.
require() {
  local var missing=()
  for var in "$@"; do
    [[ -n "${!var:-}" ]] ||
      missing+=("$var (--$(printf '%s' "$var" | tr 'A-Z_' 'a-z-'))")
  done
  ((${#missing[@]} == 0)) ||
    die "missing required setting: $(join_by ', ' "${missing[@]}");" \
      "set it in the environment or pass the flag"
}

require_gcs() {
  [[ "${!1}" == gs://?* ]] || die "$1 must be a gs:// path, got '${!1}'"
}

require_int() {
  local var="$1" min="$2"
  if ! [[ "${!var}" =~ ^[0-9]+$ ]] || ((${!var} < min)); then
    die "$var must be an integer >= $min, got '${!var}'"
  fi
}

join_by() {
  local sep="$1" out="$2"
  shift 2 || return 0
  local word
  for word in "$@"; do out+="$sep$word"; done
  printf '%s' "$out"
}

# quote WORD: the word as a shell would need it, bare when that is safe; a
# --flag=value word keeps its flag bare, for legibility.
quote() {
  if [[ "$1" =~ ^(--[A-Za-z0-9_-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote_word "${BASH_REMATCH[2]}"
  else
    quote_word "$1"
  fi
}

quote_word() {
  case "$1" in
    "") printf "''" ;;
    *[!A-Za-z0-9_./:=@%+,-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

# join_quoted ARGS...: one command line that a shell splits back into ARGS.
join_quoted() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

# run CMD...: prints "+ CMD" (stdout on a dry run, stderr otherwise) and
# runs it unless this is a dry run.
run() {
  if is_dry_run; then
    printf '+ %s\n' "$(join_quoted "$@")"
    return 0
  fi
  printf '+ %s\n' "$(join_quoted "$@")" >&2
  "$@"
}

# run_quiet CMD...: like run, for a test whose output does not matter; a dry
# run takes it as passed.
run_quiet() {
  if is_dry_run; then
    run "$@"
    return 0
  fi
  printf '+ %s\n' "$(join_quoted "$@")" >&2
  "$@" >/dev/null 2>&1
}

# capture VAR PLACEHOLDER CMD...: VAR gets CMD's output; a dry run prints CMD
# and sets VAR to PLACEHOLDER, since nothing can be asked.
capture() {
  local var="$1" placeholder="$2" output
  shift 2
  if is_dry_run; then
    printf '+ %s\n' "$(join_quoted "$@")"
    printf -v "$var" '%s' "$placeholder"
    return 0
  fi
  printf '+ %s\n' "$(join_quoted "$@")" >&2
  output="$("$@")"
  [[ -n "$output" ]] || die "no output from: $(join_quoted "$@")"
  printf -v "$var" '%s' "$output"
}

# retry TRIES CMD...: a freshly created VM refuses ssh for a while.
retry() {
  local tries="$1" i
  shift
  for ((i = 1; i <= tries; i++)); do
    run "$@" && return 0
    ((i < tries)) || break
    printf 'retrying in 20 s (%d/%d)\n' "$i" "$tries" >&2
    sleep 20
  done
  die "gave up after $tries tries: $(join_quoted "$@")"
}

# Fills TPUS with the TPU VM names: TPU_NAME alone, or TPU_NAME-0 ..
# TPU_NAME-(NUM_TPUS-1) for a fleet of single-host TPU VMs.
tpu_names() {
  require_int NUM_TPUS 1
  TPUS=()
  if ((NUM_TPUS == 1)); then
    TPUS=("$TPU_NAME")
    return
  fi
  local i
  for ((i = 0; i < NUM_TPUS; i++)); do TPUS+=("$TPU_NAME-$i"); done
}

tpu_ssh() {  # tpu_ssh NAME WORKER REMOTE_COMMAND
  run gcloud compute tpus tpu-vm ssh "$1" --zone="$ZONE" \
    --project="$PROJECT" --worker="$2" --command="$3"
}

tpu_scp() {  # tpu_scp NAME FILE...: copies into the home of every worker
  local name="$1"
  shift
  run gcloud compute tpus tpu-vm scp "$@" "$name:" --zone="$ZONE" \
    --project="$PROJECT" --worker=all
}

# Reads CONFIG_FILES (space-separated) and ARCH into STAGE_FILES, the local
# files to copy to the remote home, and MAIN_ARGS, the flags naming them
# there. A gs:// path is passed through as it is.
stage_inputs() {
  local paths=() flags=() i path flag base seen=" "
  read -r -a paths <<<"${CONFIG_FILES:-}"
  ((${#paths[@]})) || require CONFIG_FILES
  for path in "${paths[@]}"; do flags+=(--config_file); done
  if [[ -n "${ARCH:-}" ]]; then
    paths+=("$ARCH")
    flags+=(--arch)
  fi
  STAGE_FILES=()
  MAIN_ARGS=()
  for i in "${!paths[@]}"; do
    path="${paths[$i]}"
    flag="${flags[$i]}"
    if [[ "$path" == gs://* ]]; then
      MAIN_ARGS+=("$flag=$path")
      continue
    fi
    [[ -f "$path" ]] || die "${flag#--} file not found: '$path'"
    base="$(basename "$path")"
    [[ "$seen" != *" $base "* ]] ||
      die "two input files are both named '$base'; rename one"
    seen+="$base "
    STAGE_FILES+=("$path")
    MAIN_ARGS+=("$flag=$base")
  done
}

# main_cmd MODE OVERRIDE [VAR=VALUE...]: the remote command line of
# `python -m nasfpn_tf.main`, run under `env` with REMOTE_ENV and the given
# variables. OVERRIDE (an a.b=c list) goes before the user's PARAMS_OVERRIDE,
# so the user's settings win. Needs MODEL_DIR and stage_inputs' MAIN_ARGS.
main_cmd() {
  local mode="$1" override="$2" env_words=() word
  shift 2
  read -r -a env_words <<<"$REMOTE_ENV"
  for word in ${env_words[@]+"${env_words[@]}"}; do
    [[ "$word" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
      die "REMOTE_ENV words must be VAR=VALUE, got '$word'"
  done
  [[ -z "${PARAMS_OVERRIDE:-}" ]] ||
    override="${override:+$override,}$PARAMS_OVERRIDE"
  # Unbuffered, so that the log file streams as it is written.
  join_quoted env PYTHONUNBUFFERED=1 ${env_words[@]+"${env_words[@]}"} \
    "$@" "$VENV/bin/python" -m nasfpn_tf.main --mode="$mode" \
    --model_dir="$MODEL_DIR" ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"} \
    ${override:+"--params_override=$override"}
}

# detached CMD NAME: runs CMD in the background on the remote host, logging
# to NAME.log and recording its pid in NAME.pid, so that losing the ssh
# connection does not stop it.
detached() {
  printf 'nohup %s > %s.log 2>&1 < /dev/null & echo $! > %s.pid' \
    "$1" "$2" "$2"
}

# follow NAME: prints NAME.log from its start until the process ends.
follow() {
  # shellcheck disable=SC2016  # expanded on the remote host
  printf 'tail -n +1 -F --pid="$(cat %s.pid)" %s.log' "$1" "$1"
}

# build_wheel: builds the project's wheel into dist/ and sets WHEEL to it.
build_wheel() {
  local version
  version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml")"
  [[ -n "$version" ]] || die "no version found in $REPO_ROOT/pyproject.toml"
  WHEEL="$REPO_ROOT/dist/nasfpn_tf-$version-py3-none-any.whl"
  run rm -f "$WHEEL"
  run python3 -m pip wheel --quiet --no-deps --wheel-dir "$REPO_ROOT/dist" \
    "$REPO_ROOT"
  is_dry_run || [[ -f "$WHEEL" ]] || die "wheel not built: $WHEEL"
}

# install_cmd PACKAGE [EXTRA_PIP_STEP...]: the remote command that makes a
# Python 3.11 virtualenv and pip-installs PACKAGE into it; each extra step is
# a further `pip` argument string, run in order.
install_cmd() {
  local pip="$VENV/bin/pip" steps=() step words=()
  steps+=("sudo apt-get update -q")
  steps+=("sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
$(quote "$REMOTE_PYTHON") $(quote "$REMOTE_PYTHON-venv")")
  steps+=("$(join_quoted "$REMOTE_PYTHON" -m venv "$VENV")")
  steps+=("$(join_quoted "$pip" install -q --upgrade pip)")
  steps+=("$(join_quoted "$pip" install -q "$1")")
  shift
  for step in "$@"; do
    read -r -a words <<<"$step"
    steps+=("$(join_quoted "$pip" "${words[@]}")")
  done
  steps+=("$(join_quoted "$VENV/bin/python" -c \
    'import nasfpn_tf, tensorflow as tf; print("tensorflow", tf.__version__)')")
  join_by ' && ' "${steps[@]}"
}
