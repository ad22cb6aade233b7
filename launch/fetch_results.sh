#!/usr/bin/env bash
# Copies a run's results from its gs:// model_dir to this machine: by default
# the resolved config, the search's history and best spec, and the training
# metrics, whichever of them the run wrote.
#
# Usage: launch/fetch_results.sh [--dry-run] [--help] [--SETTING=VALUE ...]
#
# Settings, from the environment or as flags (--model-dir=... sets MODEL_DIR):
#   MODEL_DIR  required, gs://BUCKET/RUN
#   DEST       local folder (default results/RUN, RUN being the last part
#              of MODEL_DIR)
#   ITEMS      space-separated files or folders under MODEL_DIR (default
#              "config.yaml best_spec.json history.jsonl metrics.jsonl";
#              add "export" for the SavedModel)
#   DRY_RUN    1 to print the commands instead of running them
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_args "MODEL_DIR DEST ITEMS" "$@"
: "${ITEMS:=config.yaml best_spec.json history.jsonl metrics.jsonl}"
require MODEL_DIR
require_gcs MODEL_DIR
model_dir="${MODEL_DIR%/}"
: "${DEST:=results/$(basename "$model_dir")}"
read -r -a items <<<"$ITEMS"
((${#items[@]})) || die "ITEMS is empty: name at least one file or folder"

run mkdir -p "$DEST"
fetched=0
for item in "${items[@]}"; do
  # A search writes no metrics.jsonl and a training run no history.jsonl;
  # `ls` finds files and folders alike and fails quietly on neither.
  if run_quiet gsutil -q ls "$model_dir/$item"; then
    run gsutil -m cp -r "$model_dir/$item" "$DEST/"
    fetched=$((fetched + 1))
  else
    printf 'not in %s: %s\n' "$model_dir" "$item" >&2
  fi
done
((fetched)) || die "none of '$ITEMS' found in $model_dir"
is_dry_run || printf 'fetched %d of %d items into %s\n' "$fetched" \
  "${#items[@]}" "$DEST" >&2
