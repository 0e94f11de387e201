"""The MLflow adapter of a stage core's tracker (`finalbn.stages.tracker.Tracker`).

    summary = grid.run(cfg, paths, MlflowTracker())

Each method is the `finalbn.tracking` function of the same job, so the commands record exactly
what they recorded before the cores were handed a tracker. Stateless: a worker process makes its
own (`shared`: every process on the store sees what it records).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

from finalbn import tracking  # its modules load (with MLflow) when a method first runs
from finalbn.config import Config
from finalbn.tracking.records import RunRecord


class MlflowTracker:
    """`Tracker` on the MLflow store of `tracking.uri` (see `finalbn.tracking`)."""

    shared = True

    def setup(self, cfg: Config, stage: str) -> None:
        tracking.store.setup(cfg, stage)

    def owned(self, cfg: Config, stage: str, shard: tuple[int, int] = (0, 1), command: str = "") -> ContextManager[Any]:
        return tracking.owner.owned(cfg, stage, shard=shard, command=command)

    def cell_run(
        self,
        name: str,
        tags: dict[str, str],
        *,
        parent_run_id: str | None = None,
        killed_on: tuple[type[BaseException], ...] = (),
        state_tag: str | None = None,
    ) -> ContextManager[tracking.runs.ActiveRun]:
        return tracking.runs.cell_run(name, tags, parent_run_id=parent_run_id, killed_on=killed_on, state_tag=state_tag)

    def cells_by_key(self, cfg: Config, stages: Iterable[str], tag: str) -> dict[str, list[RunRecord]]:
        return tracking.query.runs_by_tag(tracking.store.experiment_names(cfg, *stages), tag)

    def take_over(self, cfg: Config, stage: str, runs: Iterable[RunRecord]) -> list[str]:
        return tracking.owner.take_over(cfg, stage, runs)

    def parent(
        self,
        cfg: Config,
        stage: str,
        dataset: str,
        arch: str,
        config_id: int,
        parent_key: str,
        name: str,
        baseline: str = "",
    ) -> str:
        return tracking.parents.grid_parent(cfg, stage, dataset, arch, config_id, parent_key, name, baseline)

    def open_parent(self, cfg: Config, stage: str, parent_key: str) -> str | None:
        return tracking.parents.open_parent(cfg, stage, parent_key)

    def finish_parent(self, cfg: Config, stage: str, parent_key: str, parent_id: str) -> None:
        tracking.parents.finish_parent(cfg, stage, parent_key, parent_id)

    def children(self, cfg: Config, stage: str, parent_key: str) -> list[RunRecord]:
        return tracking.query.children(tracking.store.experiment_name(cfg, stage), parent_key)

    def log_figure_to(self, run_id: str, fig: Any, path: str) -> None:
        tracking.runs.log_figure(run_id, fig, path)

    def tag_run(self, run_id: str, run_tags: Mapping[str, str]) -> None:
        for key, value in run_tags.items():
            tracking.runs.set_tag(run_id, key, value)

    def artifact_text(self, run_id: str, path: str) -> str | None:
        return tracking.query.artifact_text(run_id, path)

    def experiments(self, cfg: Config, *stages: str) -> list[str]:
        return tracking.store.experiment_names(cfg, *stages)

    def finished_cells(self, experiments: str | Sequence[str]) -> list[RunRecord]:
        return tracking.query.finished_cell_runs(experiments)

    def metric_history(self, run_id: str, keys: Iterable[str]) -> dict[int, dict[str, float]]:
        return tracking.query.metric_history(run_id, keys)

    def log_report(self, cfg: Config, out_dir: Path) -> str:
        return tracking.outputs.log_report(out_dir, tracking.store.experiment_name(cfg, "report"))


MLFLOW = MlflowTracker()  # stateless: the one every command uses
