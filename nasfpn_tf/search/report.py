"""What a search tells as it goes and leaves behind when it ends.

`Reporter` is the oracle's listener (`on_sample`, `on_update`): a progress
line per sample; per controller step the best and top specs
(`SearchDir.write_results`), the progress figure (`plots.py`) and
TensorBoard scalars under `summaries/`; at the end (`finish`) the same
files, the AP-cost front (`pareto.py`), a drawing of the best spec and a
summary of where everything is, with the command that trains the winner.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.spec import NeckSpec, SpecError
from nasfpn_tf.search import history as history_lib
from nasfpn_tf.search import oracle as oracle_lib
from nasfpn_tf.search import pareto as pareto_lib
from nasfpn_tf.search import plots
from nasfpn_tf.search import scheduler as scheduler_lib
from nasfpn_tf.search import search_dir as search_dir_lib
from nasfpn_tf.train.progress import format_duration

TOP_K = search_dir_lib.DEFAULT_TOP_K
# The progress figure costs about a second to draw: redrawn after an update
# at most this often (and always at the end).
PLOT_INTERVAL_SECONDS = 60.0


def block_specs_text(spec: NeckSpec) -> str | None:
    """`spec` as Model Garden's NASFPN_BLOCK_SPECS Python list, or None
    when its output cells are not last."""
    try:
        blocks = spec.to_block_specs()
    except SpecError:
        return None
    lines = [f"    {tuple(block)!r}," for block in blocks]
    return "NASFPN_BLOCK_SPECS = [\n" + "\n".join(lines) + "\n]"


class Reporter:
    """Progress lines, results files, figure and scalars of a search.

    Args:
        config: the experiment (for totals and titles).
        search_dir: where results go.
        top_k: specs kept in top_specs.json.
    """

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        search_dir: search_dir_lib.SearchDir,
        top_k: int = TOP_K,
    ):
        self.config = config
        self.search_dir = search_dir
        self.top_k = top_k
        self.oracle: oracle_lib.ControllerOracle | None = None
        self._start = time.monotonic()
        self._recorded = 0
        self._writer = None
        self._tallied = 0
        self._plotted = self._start
        self._best: history_lib.SampleRecord | None = None
        self._counts = dict.fromkeys(history_lib.STATUSES, 0)

    @property
    def _done_word(self) -> str:
        """What happened to a sample that was not cached: a supernet rates
        it, a proxy child trains."""
        return "rated" if self.config.search.rater == "supernet" else "trained"

    @property
    def _records(self) -> list[history_lib.SampleRecord]:
        return [] if self.oracle is None else self.oracle.records

    def _title(self) -> str:
        search = self.config.search
        return (
            f"{search.algorithm} search, {search.num_samples} samples, "
            f"{search.samples_per_update} per step"
        )

    def _tally(self, records: list[history_lib.SampleRecord]) -> None:
        """Brings the counts and best record up to `records`."""
        if self._tallied > len(records):
            self._tallied, self._best = 0, None
            self._counts = dict.fromkeys(history_lib.STATUSES, 0)
        for record in records[self._tallied :]:
            self._counts[record.status] += 1
            if record.rated and (
                self._best is None or record.reward > self._best.reward
            ):
                self._best = record
        self._tallied = len(records)

    def on_sample(self, record: history_lib.SampleRecord) -> None:
        """Logs a progress line: samples done, best reward, ETA."""
        self._recorded += 1
        records = self._records
        self._tally(records)
        total = self.config.search.num_samples
        best = self._best
        best_text = f"{best.reward:.4f} (sample {best.sample})" if best else "-"
        elapsed = time.monotonic() - self._start
        eta = elapsed / self._recorded * (total - len(records))
        detail = f" [{record.error}]" if record.error else ""
        logging.info(
            "search: %d/%d samples, sample %d %s reward %.4f%s; best %s; "
            "%d %s, %d cached, %d failed; %s elapsed, ETA %s",
            len(records),
            total,
            record.sample,
            record.status,
            record.reward,
            detail,
            best_text,
            self._counts[history_lib.OK],
            self._done_word,
            self._counts[history_lib.CACHED],
            self._counts[history_lib.FAILED],
            format_duration(elapsed),
            format_duration(eta),
        )

    def on_update(self, info: scheduler_lib.UpdateInfo) -> None:
        """Writes best/top specs, the figure and scalars of a step."""
        records = self._records
        best = self.search_dir.write_results(records, self.top_k)
        now = time.monotonic()
        if now - self._plotted >= PLOT_INTERVAL_SECONDS:
            plots.save_progress_plot(
                records, self.search_dir.plot_path, self._title()
            )
            self._plotted = now
        unique = len({r.hash for r in records})
        failed = sum(
            r.status == history_lib.FAILED
            for r in records
            if r.step == info.step
        )
        scalars = {
            "reward/batch_mean": sum(info.rewards) / len(info.rewards),
            "reward/batch_max": max(info.rewards),
            "search/unique_architectures": unique,
            "search/samples": len(records),
            "search/failed_in_batch": failed,
        }
        if best is not None:
            scalars["reward/best"] = best.reward
        for key, value in info.stats.items():
            if key != "update":
                scalars[f"controller/{key}"] = value
        self._write_scalars(scalars, info.step)
        logging.info(
            "controller step %d%s: mean reward %.4f, max %.4f; best so far "
            "%s; %d unique of %d sampled%s",
            info.step,
            " (redone from the history)" if info.replayed else "",
            scalars["reward/batch_mean"],
            scalars["reward/batch_max"],
            f"{best.reward:.4f}" if best else "-",
            unique,
            len(records),
            "".join(
                f"; {k} {v:.4g}"
                for k, v in info.stats.items()
                if k in ("loss", "entropy", "baseline")
            ),
        )

    def _write_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                self.search_dir.summaries_dir
            )
        with self._writer.as_default():
            for name, value in scalars.items():
                tf.summary.scalar(name, float(value), step=step)
        self._writer.flush()

    def finish(self, role: str, seconds: float) -> dict[str, Any]:
        """Writes the final results, prints where they are, returns them."""
        records = self._records
        search_dir = self.search_dir
        best = search_dir.write_results(records, self.top_k)
        plot = None
        if records:
            plots.save_progress_plot(
                records, search_dir.plot_path, self._title()
            )
            plot = search_dir.plot_path
        drawing = None
        if best is not None:
            drawing = self._draw(best)
        pareto = pareto_lib.write_for_search(
            self.config, search_dir.root, records
        )
        counts = {s: 0 for s in history_lib.STATUSES}
        for r in records:
            counts[r.status] += 1
        summary = {
            "role": role,
            "best_reward": None if best is None else best.reward,
            "best_sample": None if best is None else best.sample,
            "best_hash": None if best is None else best.hash,
            "best_spec": None if best is None else search_dir.best_spec_path,
            "top_specs": None if best is None else search_dir.top_specs_path,
            "history": search_dir.history_path,
            "plot": plot,
            "drawing": drawing,
            "pareto_specs": None if pareto is None else pareto["specs"],
            "pareto_plot": None if pareto is None else pareto["plot"],
            "samples": len(records),
            "trained": counts[history_lib.OK] + counts[history_lib.FAILED],
            "cached": counts[history_lib.CACHED],
            "failed": counts[history_lib.FAILED],
            "unique": len({r.hash for r in records}),
            "updates": 0 if self.oracle is None else self.oracle.updates,
            "seconds": seconds,
        }
        if self._writer is not None:
            self._writer.close()
        print(self._final_text(summary, best))
        return summary

    def _draw(self, best: history_lib.SampleRecord) -> str | None:
        try:
            from nasfpn_tf.arch import draw
        except ImportError:
            return None
        path = self.search_dir.drawing_path
        title = (
            f"best of the search: sample {best.sample}, "
            f"reward {best.reward:.4f}"
        )
        try:
            draw.to_png(best.neck_spec(), path, title=title)
        except Exception as error:  # noqa: BLE001 (a drawing is optional)
            logging.warning("Could not draw the best spec: %s", error)
            return None
        return path

    def _final_text(
        self, summary: Mapping[str, Any], best: history_lib.SampleRecord | None
    ) -> str:
        root = self.search_dir.root
        counts = (
            f"  {summary['samples']} samples ({summary['trained']} "
            f"{self._done_word}, "
            f"{summary['cached']} cached, {summary['failed']} failed), "
            f"{summary['unique']} unique, {summary['updates']} controller "
            "updates"
        )
        lines = [
            f"Search results in {root}:",
            counts,
            f"  history:       {summary['history']}",
        ]
        if best is None:
            lines.append("  no child finished with a reward yet")
        else:
            lines += [
                (
                    f"  best spec:     {summary['best_spec']} (sample "
                    f"{best.sample}, reward {best.reward:.4f})"
                ),
                f"  top specs:     {summary['top_specs']}",
            ]
        for label, key in (
            ("progress plot", "plot"),
            ("drawing", "drawing"),
            ("pareto specs", "pareto_specs"),
            ("pareto plot", "pareto_plot"),
        ):
            if summary[key]:
                lines.append(f"  {label + ':':<15}{summary[key]}")
        lines.append(f"  scalars:       {self.search_dir.summaries_dir}")
        if best is not None:
            text = block_specs_text(best.neck_spec())
            if text:
                lines += ["Model Garden form of the best spec:", text]
            lines.append(
                "Train it: python -m nasfpn_tf.main --mode=train_and_eval "
                f"--config_file={os.path.join(root, 'config.yaml')} "
                f"--arch={summary['best_spec']} "
                f"--model_dir={os.path.join(root, 'best')}"
            )
        return "\n".join(lines)
