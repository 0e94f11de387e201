"""The tracker a stage core is handed: what a cell's run and the grid's bookkeeping need of a store.

    summary = grid.run(cfg, GridPaths(splits, results), MlflowTracker())   # the commands: the store
    summary = grid.run(cfg, GridPaths(splits, results), MemoryTracker())   # tests, `finalbn bench`

`Tracker` is the protocol; `finalbn.tracking.adapter.MlflowTracker` writes to the MLflow store
(what every command uses); `MemoryTracker` keeps runs in this process only and forgets them when it
ends (nothing is written: no store, no files), so a stage's core runs whole with no MLflow store at
all. The cores of the stages that read runs other commands made (search, report, export) query the
store by MLflow filters and need the store-backed tracker; the grid, the sensitivity stage and a
single cell (`cellrun.track_cell`) run on either. `shared` says whether other processes see what a
tracker records: a core runs its work in worker processes only with a shared one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any, Protocol

import matplotlib.pyplot as plt

from finalbn.config import Config
from finalbn.tracking import records
from finalbn.tracking.records import FAILED, FINISHED, KILLED, RUNNING, RunRecord


class EpochLog(Protocol):
    """An epoch callback (`train.engine`): per-epoch metrics, step = epoch; `flush` when training ends."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def flush(self) -> None: ...


class Run(Protocol):
    """The open run a cell writes to (`Tracker.cell_run`)."""

    run_id: str

    def epoch_logger(self) -> EpochLog: ...

    def logged_params(self) -> dict[str, str]: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float]) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_figure(self, fig: Any, path: str) -> None: ...

    def log_files(self, files: Mapping[str, str]) -> None: ...

    def log_dataset(self, manifest: Path, name: str, sha256: str) -> None: ...

    def log_torch_model(self, model: Any, example: Any, output: Any) -> None: ...


class Tracker(Protocol):
    """Where a stage core records its cells and finds the ones already done. Experiments are
    named per stage (`grid`, `sensitivity`, ...); a cell's runs are found by its key."""

    shared: bool  # other processes (a core's workers) see what it records

    def setup(self, cfg: Config, stage: str) -> None:
        """The store and `stage`'s experiment exist (before any worker touches them)."""

    def owned(self, cfg: Config, stage: str, shard: tuple[int, int] = (0, 1), command: str = "") -> ContextManager[Any]:
        """This command owns `stage`'s experiment (its shard) for the block, or StoreError."""

    def cell_run(
        self,
        name: str,
        tags: dict[str, str],
        *,
        parent_run_id: str | None = None,
        killed_on: tuple[type[BaseException], ...] = (),
        state_tag: str | None = None,
    ) -> ContextManager[Run]:
        """A run that always ends: FINISHED, FAILED on an exception, KILLED on Ctrl-C or `killed_on`."""

    def cells_by_key(self, cfg: Config, stages: Iterable[str], tag: str) -> dict[str, list[RunRecord]]:
        """Runs of `stages`' experiments that carry `tag`, grouped by its value."""

    def take_over(self, cfg: Config, stage: str, runs: Iterable[RunRecord]) -> list[str]:
        """End KILLED the RUNNING `runs` a dead process left; StoreError when one's process lives."""

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
        """The parent run of one grid configuration: found by key (reopened), or created."""

    def open_parent(self, cfg: Config, stage: str, parent_key: str) -> str | None:
        """The id of `parent_key`'s parent when a killed run left it open."""

    def finish_parent(self, cfg: Config, stage: str, parent_key: str, parent_id: str) -> None:
        """The mean and std of its FINISHED children on the parent; it ends FINISHED."""

    def children(self, cfg: Config, stage: str, parent_key: str) -> list[RunRecord]:
        """The FINISHED cell runs under `parent_key`'s parent in `stage`'s experiment (its replicates)."""

    def log_figure_to(self, run_id: str, fig: Any, path: str) -> None:
        """A matplotlib figure as the PNG artifact `path` of the run `run_id` (open or ended); the
        figure is closed."""

    def tag_run(self, run_id: str, run_tags: Mapping[str, str]) -> None:
        """Tags on the run `run_id` (open or ended); `mlflow.runName` renames it."""

    def artifact_text(self, run_id: str, path: str) -> str | None:
        """A text artifact of a run, or None."""

    def experiments(self, cfg: Config, *stages: str) -> list[str]:
        """The experiments that hold `stages`' runs."""

    def finished_cells(self, experiments: str | Sequence[str]) -> list[RunRecord]:
        """Every FINISHED cell run (tag finalbn.cell=true) of `experiments`."""

    def metric_history(self, run_id: str, keys: Iterable[str]) -> dict[int, dict[str, float]]:
        """{epoch: {key: value}} of a run's per-epoch metrics `keys`."""

    def log_report(self, cfg: Config, out_dir: Path) -> str:
        """The report folder as a run of the report's experiment (summary.json's metrics, the
        verdict as tags); its run id. FileNotFoundError when the folder does not exist."""


class _MemoryEpochs:
    def __init__(self, run: _MemoryRun) -> None:
        self.run = run

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if k != "epoch":
                self.run.history.setdefault(k, []).append((epoch, float(v)))

    def flush(self) -> None:
        pass


class _MemoryRun:
    """A run kept in memory: its params, latest metrics, per-epoch history, tags and text files."""

    def __init__(self, run_id: str, name: str, experiment: str, run_tags: Mapping[str, str]) -> None:
        self.run_id, self.name, self.experiment = run_id, name, experiment
        self.status, self.start_time = RUNNING, _now_ms()
        self.end_time: int | None = None
        self.params: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.tags: dict[str, str] = dict(run_tags)
        self.files: dict[str, str] = {}

    def epoch_logger(self) -> _MemoryEpochs:
        return _MemoryEpochs(self)

    def logged_params(self) -> dict[str, str]:
        return dict(self.params)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update({k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self.metrics.update({k: float(v) for k, v in metrics.items() if v is not None and v == v})

    def set_tags(self, run_tags: Mapping[str, str]) -> None:
        self.tags.update({k: str(v) for k, v in run_tags.items()})

    def log_figure(self, fig: Any, path: str) -> None:
        plt.close(fig)  # nothing kept: a figure is drawn from the files again (`finalbn figures`)

    def log_files(self, files: Mapping[str, str]) -> None:
        self.files.update(files)

    def log_dataset(self, manifest: Path, name: str, sha256: str) -> None:
        self.tags[records.DATASET_DIGEST] = sha256[:32]

    def log_torch_model(self, model: Any, example: Any, output: Any) -> None:
        self.tags[records.MODEL_URI] = f"memory:/{self.run_id}/model"

    def record(self) -> RunRecord:
        return RunRecord(
            run_id=self.run_id,
            name=self.name,
            status=self.status,
            start_time=self.start_time,
            end_time=self.end_time,
            metrics=dict(self.metrics),
            params=dict(self.params),
            tags=dict(self.tags),
        )


class MemoryTracker:
    """The tracker that keeps runs in this process (`Tracker`): no store, nothing written, gone
    when the process ends. Run ids are `mem-1`, `mem-2`, ...; statuses, parents, keys and the
    mean/std on a parent as the MLflow adapter records them."""

    shared = False

    def __init__(self) -> None:
        self.runs: dict[str, _MemoryRun] = {}
        self._ids = itertools.count(1)
        self.stage = ""  # the experiment new cell runs go to (`setup`)

    def setup(self, cfg: Config, stage: str) -> None:
        self.stage = stage

    def owned(self, cfg: Config, stage: str, shard: tuple[int, int] = (0, 1), command: str = "") -> ContextManager[Any]:
        return contextlib.nullcontext()  # one process, one owner

    def _new(self, name: str, experiment: str, run_tags: Mapping[str, str]) -> _MemoryRun:
        run = _MemoryRun(f"mem-{next(self._ids)}", name, experiment, run_tags)
        self.runs[run.run_id] = run
        return run

    @contextlib.contextmanager
    def cell_run(
        self,
        name: str,
        tags: dict[str, str],
        *,
        parent_run_id: str | None = None,
        killed_on: tuple[type[BaseException], ...] = (),
        state_tag: str | None = None,
    ) -> Iterator[_MemoryRun]:
        stage = tags.get(records.STAGE, self.stage)
        run = self._new(
            name,
            stage,
            {records.STAGE: stage, **tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})},
        )

        def end(status: str, state: str) -> None:
            run.status, run.end_time = status, _now_ms()
            if state_tag:
                run.tags[state_tag] = state

        try:
            yield run
        except (KeyboardInterrupt, SystemExit):
            end(KILLED, "killed")
            raise
        except killed_on as exc:
            run.tags.update(records.pruned_tags(str(exc)))
            end(KILLED, "pruned")
            raise
        except BaseException:
            end(FAILED, "failed")
            raise
        else:
            end(FINISHED, "complete")

    def cells_by_key(self, cfg: Config, stages: Iterable[str], tag: str) -> dict[str, list[RunRecord]]:
        wanted = set(stages)
        out: dict[str, list[RunRecord]] = {}
        for run in self.runs.values():
            if run.experiment in wanted and run.tags.get(tag):
                out.setdefault(run.tags[tag], []).append(run.record())
        return out

    def take_over(self, cfg: Config, stage: str, runs: Iterable[RunRecord]) -> list[str]:
        doomed = [r.run_id for r in runs if r.status == RUNNING]
        for run_id in doomed:  # in one process a RUNNING run outside its block is a dead one's
            self.runs[run_id].status = KILLED
        return doomed

    def _parent(self, stage: str, parent_key: str) -> _MemoryRun | None:
        found = [
            r
            for r in self.runs.values()
            if r.experiment == stage
            and r.tags.get(records.PARENT_KEY) == parent_key
            and r.tags.get(records.PARENT) == "true"
        ]
        return found[-1] if found else None

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
        found = self._parent(stage, parent_key)
        if found is not None:
            found.status = RUNNING if found.status == KILLED else found.status
            return found.run_id
        return self._new(
            name,
            stage,
            {
                records.STAGE: stage,
                records.PARENT: "true",
                records.PARENT_KEY: parent_key,
                records.DATASET: dataset,
                records.ARCH: arch,
                records.CONFIG_ID: str(config_id),
                **({records.BASELINE: baseline} if baseline else {}),
            },
        ).run_id

    def open_parent(self, cfg: Config, stage: str, parent_key: str) -> str | None:
        found = self._parent(stage, parent_key)
        return found.run_id if found is not None and found.status != FINISHED else None

    def finish_parent(self, cfg: Config, stage: str, parent_key: str, parent_id: str) -> None:
        kids = [r for r in self.runs.values() if r.tags.get("mlflow.parentRunId") == parent_id and r.status == FINISHED]
        parent = self.runs[parent_id]
        for k in sorted({k for c in kids for k in c.metrics if k.startswith(("test_", "val_", "selected_epoch"))}):
            vals = [c.metrics[k] for c in kids if k in c.metrics]
            parent.metrics[k] = sum(vals) / len(vals)  # the mean under the children's name, as the store's parents
        if kids:
            parent.tags["replicates_finished"] = str(len(kids))
        parent.status, parent.end_time = FINISHED, _now_ms()

    def children(self, cfg: Config, stage: str, parent_key: str) -> list[RunRecord]:
        return [
            r.record()
            for r in self.runs.values()
            if r.experiment == stage
            and r.status == FINISHED
            and r.tags.get(records.CELL) == "true"
            and r.tags.get(records.PARENT_KEY) == parent_key
        ]

    def log_figure_to(self, run_id: str, fig: Any, path: str) -> None:
        plt.close(fig)  # not drawn: its name is kept, as `log_report` keeps its files' names
        self.runs[run_id].files[path] = ""

    def tag_run(self, run_id: str, run_tags: Mapping[str, str]) -> None:
        run = self.runs[run_id]
        run.tags.update(run_tags)
        run.name = run_tags.get("mlflow.runName", run.name)

    def artifact_text(self, run_id: str, path: str) -> str | None:
        run = self.runs.get(run_id)
        return run.files.get(path) if run is not None else None

    def experiments(self, cfg: Config, *stages: str) -> list[str]:
        return list(stages)

    def finished_cells(self, experiments: str | Sequence[str]) -> list[RunRecord]:
        wanted = {experiments} if isinstance(experiments, str) else set(experiments)
        return [
            r.record()
            for r in self.runs.values()
            if r.experiment in wanted and r.status == FINISHED and r.tags.get(records.CELL) == "true"
        ]

    def metric_history(self, run_id: str, keys: Iterable[str]) -> dict[int, dict[str, float]]:
        by_epoch: dict[int, dict[str, float]] = {}
        run = self.runs.get(run_id)
        for key in keys if run is not None else ():
            assert run is not None  # the loop runs only for a run
            for epoch, value in run.history.get(key, []):
                by_epoch.setdefault(int(epoch), {})[key] = value
        return by_epoch

    def log_report(self, cfg: Config, out_dir: Path) -> str:
        out = Path(out_dir)
        if not out.is_dir():
            raise FileNotFoundError(f"{out} does not exist: build the report first")
        run = self._new("report", "report", {records.STAGE: "report", records.REPORT: "true"})
        run.files = {str(f.relative_to(out)): "" for f in sorted(out.rglob("*")) if f.is_file()}  # names only
        summary = out / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text(encoding="utf-8"))
            run.log_metrics({k: float(v) for k, v in (s.get("metrics") or {}).items() if isinstance(v, (int, float))})
            run.set_tags({f"verdict_{i}": str(line) for i, line in enumerate(s.get("verdict") or [])})
        run.status, run.end_time = FINISHED, _now_ms()
        return run.run_id


def _now_ms() -> int:
    return int(time.time() * 1000)
