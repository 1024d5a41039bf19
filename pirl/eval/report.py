"""Evaluation results: a per-episode JSONL log (resume), per-task / per-suite summaries, JSON and Markdown.

Layout of an evaluation's output directory:

    <out>/episodes.jsonl   one line per finished episode (appended as they finish; the resume source)
    <out>/results.json     summary: per-suite and per-task success rate and mean episode length
    <out>/results.md       the same as a Markdown table
    <out>/videos/          mp4s of the first episode(s) of each task

An interrupted evaluation restarted with the same `--out` skips every (backend, suite, task,
episode) already in episodes.jsonl; a truncated last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import threading
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """The outcome of one evaluation episode."""

    backend: str
    """'libero' (real LIBERO) or 'mjx' (pirl's on-device suites)."""
    suite: str
    """Task suite, e.g. libero_spatial."""
    task_id: int
    """Task index within the suite."""
    episode: int
    """Episode index within the task (it picks the initial state)."""
    init_id: int
    """Initial-state index used."""
    success: bool
    """The task was accomplished before the episode limit."""
    length: int
    """Control steps executed by the policy (settle steps excluded)."""
    prompt: str = ""
    """The task's instruction."""
    seconds: float = 0.0
    """Wall-clock time of the episode (0 when not measured per episode)."""

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.backend, self.suite, self.task_id, self.episode)


def episode_key(backend: str, suite: str, task_id: int, episode: int) -> tuple[str, str, int, int]:
    return (backend, suite, int(task_id), int(episode))


class EpisodeLog:
    """Append-only JSONL of finished episodes; thread-safe appends, tolerant reads."""

    def __init__(self, out_dir: str | pathlib.Path):
        self.path = pathlib.Path(out_dir) / EPISODES_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def load(self) -> dict[tuple[str, str, int, int], EpisodeResult]:
        """Finished episodes by key (the last record wins); unreadable lines are skipped with a warning."""
        done: dict[tuple[str, str, int, int], EpisodeResult] = {}
        if not self.path.is_file():
            return done
        fields = {f.name for f in dataclasses.fields(EpisodeResult)}
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                result = EpisodeResult(**{k: v for k, v in record.items() if k in fields})
            except (json.JSONDecodeError, TypeError) as e:
                logger.warning(
                    "%s line %d is unreadable (%s); that episode will be run again", self.path, number, e
                )
                continue
            done[result.key] = result
        return done

    def append(self, result: EpisodeResult) -> None:
        line = json.dumps(dataclasses.asdict(result))
        with self._lock:
            needs_newline = (
                self.path.is_file() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
            )
            with self.path.open("a") as f:
                f.write(("\n" if needs_newline else "") + line + "\n")
                f.flush()


def _ends_with_newline(path: pathlib.Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def summarize(results: Iterable[EpisodeResult]) -> dict[str, Any]:
    """{"suites": {suite: {"success_rate", "episodes", "mean_length", "tasks": {task_id: {...}}}},
    "overall": {...}} over the given episodes (per backend when several are mixed: keys "backend/suite")."""
    results = list(results)
    backends = {r.backend for r in results}
    groups: dict[str, list[EpisodeResult]] = {}
    for r in results:
        name = r.suite if len(backends) <= 1 else f"{r.backend}/{r.suite}"
        groups.setdefault(name, []).append(r)
    suites = {}
    for name, rs in sorted(groups.items()):
        tasks: dict[int, list[EpisodeResult]] = {}
        for r in rs:
            tasks.setdefault(r.task_id, []).append(r)
        suites[name] = {
            **_stats(rs),
            "tasks": {str(t): {**_stats(trs), "prompt": trs[0].prompt} for t, trs in sorted(tasks.items())},
        }
    return {"suites": suites, "overall": _stats(results)}


def _stats(rs: list[EpisodeResult]) -> dict[str, Any]:
    n = len(rs)
    return {
        "episodes": n,
        "successes": sum(r.success for r in rs),
        "success_rate": sum(r.success for r in rs) / n if n else float("nan"),
        "mean_length": sum(r.length for r in rs) / n if n else float("nan"),
    }


def markdown_table(summary: Mapping[str, Any]) -> str:
    """Per-suite table, then one per-task table per suite."""
    lines = ["| suite | episodes | success rate | mean length |", "|---|---:|---:|---:|"]
    for name, s in summary["suites"].items():
        lines.append(f"| {name} | {s['episodes']} | {s['success_rate']:.1%} | {s['mean_length']:.1f} |")
    o = summary["overall"]
    lines.append(f"| **all** | {o['episodes']} | {o['success_rate']:.1%} | {o['mean_length']:.1f} |")
    for name, s in summary["suites"].items():
        lines += ["", f"### {name}", "", "| task | prompt | episodes | success rate | mean length |"]
        lines.append("|---:|---|---:|---:|---:|")
        for task_id, t in s["tasks"].items():
            prompt = t["prompt"].replace("|", "\\|")
            lines.append(
                f"| {task_id} | {prompt} | {t['episodes']} | {t['success_rate']:.1%} | {t['mean_length']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | pathlib.Path, results: Iterable[EpisodeResult], meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write results.json (summary + `meta`) and results.md; returns the summary."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    (out / RESULTS_JSON).write_text(json.dumps({"meta": dict(meta or {}), **summary}, indent=2, default=str))
    header = "# Evaluation results\n\n"
    if meta:
        header += "".join(f"- {k}: {v}\n" for k, v in meta.items()) + "\n"
    (out / RESULTS_MD).write_text(header + markdown_table(summary))
    return summary
