"""The two-stage search: the supernet pre-filters, standalone children decide.

A shared-weight rating is cheap but loose (`docs/supernet.md`); a
standalone proxy child ranks specs well but costs minutes. With
`search.rater: supernet` and `search.supernet.finalists: k > 0`, a search
rates its samples on the supernet, then trains the k distinct specs with
the best supernet rewards as standalone proxy children (`search.proxy`,
exactly as a standalone search rates a sample: `proxy.ProxyTask`). The
search's answer is the best finalist by the standalone reward.

Each finalist's row is appended to `finalists.jsonl` when it finishes, so a
rerun of the same command trains only the finalists still missing (a
killed child restarts from its checkpoint, as in the search).
`finalists.json` summarises them and `best_finalist_spec.json` is the
answer's spec.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.run_files import (
    BEST_FINALIST_SPEC_FILE,
    FINALISTS_DIR,
    FINALISTS_FILE,
    FINALISTS_LOG_FILE,
)
from nasfpn_tf.search.history import CACHED, OK, SampleRecord


class FinalistsError(ValueError):
    """The finalists' log does not belong to this search."""


def pick(records: Sequence[SampleRecord], count: int) -> list[SampleRecord]:
    """The first sample of each of the `count` distinct specs with the best
    rewards (ties: the earlier sample first); failed samples never."""
    first: dict[str, SampleRecord] = {}
    for record in sorted(records, key=lambda r: r.sample):
        if record.status in (OK, CACHED) and record.hash not in first:
            first[record.hash] = record
    ranked = sorted(first.values(), key=lambda r: (-r.reward, r.sample))
    return ranked[:count]


def run(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    records: Sequence[SampleRecord],
    *,
    proxy: Any = None,
) -> dict[str, Any]:
    """Trains (or resumes training) the finalists of a supernet search.

    Args:
        config: the search's experiment (`search.supernet.finalists`,
            `search.proxy`).
        model_dir: the search directory.
        records: the search's samples, rated on the supernet.
        proxy: rates a spec standalone (`reward(spec, work_dir) ->
            ProxyResult`, `release(work_dir)`); None trains
            `proxy.ProxyTask` children under `runtime`'s strategy.

    Returns:
        The summary written to `finalists.json`: the finalists (hash,
        sample, supernet rank and reward, standalone reward, status), the
        best one's hash, rewards and spec path (None when none finished).
    """
    chosen = pick(records, config.search.supernet.finalists)
    log = files.JsonlLog.open(os.path.join(model_dir, FINALISTS_LOG_FILE))
    done = {row["hash"]: row for row in log.rows}
    _check_log(log.path, done, chosen)
    for rank, record in enumerate(chosen, start=1):
        if record.hash in done:
            continue
        if proxy is None:
            proxy = _standalone_proxy(config)
        work_dir = os.path.join(model_dir, FINALISTS_DIR, record.hash)
        result = proxy.reward(record.neck_spec(), work_dir)
        row = {
            "hash": record.hash,
            "sample": record.sample,
            "supernet_rank": rank,
            "supernet_reward": record.reward,
            "reward": result.reward,
            "status": result.status,
            "error": result.error,
            "seconds": round(result.seconds, 3),
            "metrics": dict(result.metrics),
            "spec": dict(record.spec),
            "time": time.time(),
        }
        log.append(row)
        done[record.hash] = row
        proxy.release(work_dir)
        print(
            f"finalist {rank}/{len(chosen)}: sample {record.sample} "
            f"({record.hash}) supernet {record.reward:.4f} -> standalone "
            f"{result.reward:.4f} ({result.status})",
            flush=True,
        )
    return _summarise(model_dir, [done[r.hash] for r in chosen])


def _check_log(path: str, done: dict, chosen: Sequence[SampleRecord]) -> None:
    """A log row must be one of this search's finalists (the search's
    records decide them; a rerun with more samples may change them)."""
    names = {r.hash for r in chosen}
    stray = sorted(set(done) - names)
    if stray:
        raise FinalistsError(
            f"{path}: finalists {stray} are not among this search's "
            f"{len(chosen)} best specs (the search went on after they were "
            "trained?); move the file away to train the finalists anew."
        )


def _standalone_proxy(config: config_lib.ExperimentConfig) -> Any:
    from nasfpn_tf.search import proxy as proxy_lib
    from nasfpn_tf.train import strategy as strategy_lib

    return proxy_lib.ProxyTask(
        config, strategy=strategy_lib.make_strategy(config.runtime)
    )


def _summarise(model_dir: str, rows: Sequence[dict]) -> dict[str, Any]:
    finished = [r for r in rows if r["status"] == OK]
    best = max(
        finished, key=lambda r: (r["reward"], -r["supernet_rank"]), default=None
    )
    spec_path = None
    if best is not None:
        spec_path = os.path.join(model_dir, BEST_FINALIST_SPEC_FILE)
        NeckSpec.from_dict(best["spec"]).save(spec_path)
    summary = {
        "finalists": [
            {
                k: r[k]
                for k in (
                    "hash",
                    "sample",
                    "supernet_rank",
                    "supernet_reward",
                    "reward",
                    "status",
                )
            }
            for r in rows
        ],
        "best_hash": None if best is None else best["hash"],
        "best_sample": None if best is None else best["sample"],
        "best_reward": None if best is None else best["reward"],
        "best_supernet_rank": None if best is None else best["supernet_rank"],
        "best_spec": spec_path,
    }
    files.write_atomic(
        os.path.join(model_dir, FINALISTS_FILE),
        json.dumps(summary, indent=1) + "\n",
    )
    return summary


def final_text(summary: dict[str, Any], model_dir: str) -> str:
    """The lines a two-stage search ends with."""
    rows = summary["finalists"]
    lines = [f"Finalists trained standalone ({len(rows)}):"]
    for r in rows:
        lines.append(
            f"  #{r['supernet_rank']} sample {r['sample']} ({r['hash']}): "
            f"supernet {r['supernet_reward']:.4f}, standalone "
            f"{r['reward']:.4f} ({r['status']})"
        )
    if summary["best_spec"] is None:
        lines.append("  no finalist finished")
        return "\n".join(lines)
    lines += [
        (
            f"  best finalist: {summary['best_spec']} (sample "
            f"{summary['best_sample']}, standalone "
            f"{summary['best_reward']:.4f}, supernet rank "
            f"{summary['best_supernet_rank']})"
        ),
        (
            "Train it: python -m nasfpn_tf.main --mode=train_and_eval "
            f"--config_file={os.path.join(model_dir, 'config.yaml')} "
            f"--arch={summary['best_spec']} "
            f"--model_dir={os.path.join(model_dir, 'best_finalist')}"
        ),
    ]
    return "\n".join(lines)
