"""What the rest of finalbn reads from the tracking store: typed run records and the tag names.

    run = RunRecord(run_id="ab12", name="BN r0", status=FINISHED, metrics={"test_f1_1": 0.8}, ...)
    run.finished, run.tags[CELL_KEY], run.metric("val_last_auroc")

Every tag that finalbn writes or reads is named here once. MLflow's own objects never leave
`finalbn.tracking`: queries turn them into `RunRecord`s (`query.record`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# run statuses, as MLflow spells them
FINISHED, RUNNING, FAILED, KILLED = "FINISHED", "RUNNING", "FAILED", "KILLED"

# what kind of run it is (value "true")
CELL = "finalbn.cell"  # one training cell: a grid cell, a search trial or comparison run, an export's retraining
PARENT = "finalbn.parent"  # a grid configuration's parent run (mean and std over its replicates)
TRIAL = "finalbn.trial"  # a search trial
STUDY = "finalbn.study"  # a search study's parent run (value: the study's name)
SEARCH_COMPARE = "finalbn.search_compare"  # a run the search's comparison trained
EXPORT = "finalbn.export"  # the export's retraining of a run that kept no weights
CEILING = "finalbn.ceiling"
REPORT = "finalbn.report"
NEEDS = "finalbn.needs"  # the data-needs planner's answer (its cells are CELL runs)

STAGE = "stage"  # on every run: the stage that made it (grid, search, ...; `store.STAGES`)
WORKER = "finalbn.worker"  # on every run: host:pid of the process that made it (a kill -9 test finds it there)
WORKER_STARTED = "finalbn.worker_started"  # and that process's start time (Unix s): a reused pid is told apart
DATASET_DIGEST = "dataset_digest"  # on a cell run: the digest of its MLflow dataset input (the split manifest)

# what identifies a result
CELL_KEY = "cell_key"  # a grid cell's key (`keys.result_key` of its configuration and replicate)
RESULT_KEY = "result_key"  # the same key, on a search trial or comparison run
PARENT_KEY = "parent_key"  # a grid parent's key: its cells' key without the replicate
CONFIG_KEY = "config_key"  # on every cell run: its configuration's key without the replicate (`selection`)
BASELINE = "baseline"  # an imbalance baseline's method on its base configuration

# the cell's description
DATASET, ARCH, REPLICATE, SEED = "dataset", "arch", "replicate", "seed"
CONFIG_ID, CONFIG_NAME = "config_id", "config_name"
MANIFEST = "manifest_sha256"
BN_POLICY, DEVICE, FEATURES, SELECTED_EPOCH = "bn_policy", "device", "features", "selected_epoch"

# the search
STUDY_NAME, TRIAL_NUMBER, TRIAL_STATE, COMPARE_ARMS = "study", "trial", "trial_state", "compare_arms"

# the export
EXPORT_SOURCE = "export_source"  # on a retraining: the run it rebuilds
EXPORT_WEIGHTS = "export_weights"  # on a retraining: the artifact path of its state_dict
MODEL_URI = "model_uri"
ONNX_SHA256 = "onnx_sha256"  # on a registered version: its ONNX file's digest (one version per exported file)
ONNX_SIZE = "onnx_size"  # on a registered version: its ONNX file's size in bytes (the card's onnx.size)

# MLflow's own tags that finalbn writes
NOTE = "mlflow.note.content"  # a run's Description in the UI (markdown)
# a pruned search trial's run (it stays KILLED): the tag Optuna's own MLflowCallback (optuna-integration)
# gives a finished trial's run, `state` = the TrialState's name, here always PRUNED
OPTUNA_STATE, PRUNED = "state", "PRUNED"
REPLICATES_FINISHED = "replicates_finished"  # on a grid parent: how many replicates its metrics average

# params beside the config values (`stages.cellrun.cell_params`), so MLflow's run table and
# parallel-coordinates view can compare runs by them
REPLICATE_PARAM = "replicate"  # on a cell run: its replicate
SEED_EFFECTIVE = "seed.effective"  # on a cell run: the seed it trained with (`config.cell_seed`), not train.seed
PARENT_ARTIFACTS = ("replicates.json", "replicates.csv")  # on a grid parent: mean, std, n and every replicate


def switch_param(toggle: str) -> str:
    """The param of one of the six switches on a cell and a grid parent: `switch.bn` (value true/false)."""
    return f"switch.{toggle}"


def pruned_tags(reason: str) -> dict[str, str]:
    """The tags of a run a search's pruner stopped: Optuna's state and a Description saying why
    (`reason`: the TrialPruned's message)."""
    why = reason.strip().rstrip(".") or "no reason given"
    return {
        OPTUNA_STATE: PRUNED,
        NOTE: f"Pruned by the search's pruner: {why[:1000]}. Its epochs up to then are kept; it is not a result.",
    }


def toggle_tag(toggle: str) -> str:
    """The tag of one of the six switches: `BN`, `WL`, ... (value "true"/"false")."""
    return toggle.upper()


@dataclass(frozen=True)
class RunRecord:
    """One tracked run as finalbn reads it. Times are epoch milliseconds (None while unknown);
    metrics hold each key's latest value."""

    run_id: str
    name: str
    status: str
    start_time: int | None = None
    end_time: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    active: bool = True  # False once deleted (MLflow's lifecycle stage)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def metric(self, key: str, default: float = math.nan) -> float:
        return float(self.metrics.get(key, default))

    def tag(self, key: str, default: str = "") -> str:
        return self.tags.get(key, default)

    def flag(self, key: str) -> bool:
        """A "true"/"false" tag (the run kinds above, the six switches)."""
        return self.tags.get(key) == "true"

    def with_prefix(self, prefix: str) -> dict[str, float]:
        """Metrics whose name starts with `prefix`, the prefix removed: `val_last_` -> {auroc: ...}."""
        return {k[len(prefix) :]: v for k, v in self.metrics.items() if k.startswith(prefix)}


def latest(runs: list[RunRecord]) -> RunRecord:
    """The run that ended last (a cell that ran twice keeps its latest result)."""
    return max(runs, key=lambda r: r.end_time or 0)
