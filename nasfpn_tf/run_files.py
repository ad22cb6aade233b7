"""The names of what a run writes to its model_dir, in one place.

Every mode writes ``config.yaml``; the rest depends on the mode::

    model_dir/
      config.yaml            the config the run used (a rerun resumes with it)
      spec.json              train: the neck's spec
      metrics.jsonl          train/eval: one row per log line and evaluation
      checkpoints/           train: checkpoints (unreadable/ holds bad ones)
      eval/                  train/eval: TensorBoard summaries of evaluations
      export/                export: the SavedModel (assets.extra/spec.json)
      export/tflite/         export --format=tflite: model_<quantization>
                             .tflite, .json and .txt beside each
      predictions/           predict: predictions.json and drawn images/
      history.jsonl          search: one row per child
      best_spec.json, best_spec.png, top_specs.json, result.json,
      search_progress.png    search: results, rewritten as it goes
      pareto_specs.json,
      pareto.png             search: AP-cost front and figure, at the end
      controller/            search: controller checkpoints, latest.json
      trials/                search: one folder per child (result.json,
                             rungs.jsonl with successive halving)
      summaries/             search: TensorBoard scalars
      warm_start.json        search: what --warm_start used
      fidelity.jsonl, fidelity.json, fidelity.png, fidelity_specs.json,
      children/              fidelity: log, report, plot, specs, trainings
      supernet_fidelity.json,
      supernet_fidelity.txt  fidelity (search.rater=supernet): report
      supernet/              search/fidelity with search.rater=supernet:
                             the trained supernet (config.yaml,
                             checkpoints/, metrics.jsonl, supernet.json)
      supernet.json          supernet: written when its training is done
      supernet_baselines.json
                             search (supernet): the best spec's reward
                             beside the published and random specs'

Modules import the names they write from here.
"""

# Every mode.
CONFIG_FILENAME = "config.yaml"

# Training, evaluation, export and prediction.
SPEC_FILENAME = "spec.json"
METRICS_FILENAME = "metrics.jsonl"
CHECKPOINT_SUBDIR = "checkpoints"
UNREADABLE_SUBDIR = "unreadable"
EVAL_SUBDIR = "eval"
EXPORT_SUBDIR = "export"
EXTRA_ASSETS_DIR = "assets.extra"
# Under export/: model_<quantization>.tflite, .json and .txt.
TFLITE_SUBDIR = "tflite"
PREDICTIONS_SUBDIR = "predictions"
PREDICTIONS_FILENAME = "predictions.json"
IMAGES_SUBDIR = "images"

# Search.
HISTORY_FILE = "history.jsonl"
BEST_SPEC_FILE = "best_spec.json"
TOP_SPECS_FILE = "top_specs.json"
CONTROLLER_DIR = "controller"
LATEST_FILE = "latest.json"
TRIALS_DIR = "trials"
RESULT_FILE = "result.json"
RUNGS_FILE = "rungs.jsonl"
SEARCH_PLOT_FILE = "search_progress.png"
DRAWING_FILE = "best_spec.png"
SUMMARIES_DIR = "summaries"
WARM_START_FILE = "warm_start.json"
PARETO_SPECS_FILE = "pareto_specs.json"
PARETO_PLOT_FILE = "pareto.png"

# Fidelity.
FIDELITY_LOG_FILE = "fidelity.jsonl"
FIDELITY_REPORT_FILE = "fidelity.json"
FIDELITY_PLOT_FILE = "fidelity.png"
FIDELITY_SPECS_FILE = "fidelity_specs.json"
FIDELITY_CHILDREN_DIR = "children"

# The shared-weight supernet (search.rater=supernet).
SUPERNET_SUBDIR = "supernet"
SUPERNET_DONE_FILE = "supernet.json"
SUPERNET_BASELINES_FILE = "supernet_baselines.json"
SUPERNET_FIDELITY_REPORT_FILE = "supernet_fidelity.json"
SUPERNET_FIDELITY_TABLE_FILE = "supernet_fidelity.txt"
# A two-stage search's finalists (search/finalists.py).
FINALISTS_LOG_FILE = "finalists.jsonl"
FINALISTS_FILE = "finalists.json"
FINALISTS_DIR = "finalists"
BEST_FINALIST_SPEC_FILE = "best_finalist_spec.json"
