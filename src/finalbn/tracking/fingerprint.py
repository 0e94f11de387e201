"""Whether the tracking store holds what a stage's outputs cite: one small JSON file per stage.

    cited([Path("results/grid.csv")])                      # {run id, ...} the files name
    mark(Path("results/store/grid.json"), runs, models)    # a stage, as it ends: all there
    refresh(Path("results/store/grid.json"))               # `finalbn store`, before the stages

DVC sees files, not an MLflow store: after `rm mlflow.db` or with another MLFLOW_TRACKING_URI it
would restore results whose runs exist nowhere. So each tracking stage reads its fingerprint as a
DVC dependency and rewrites it as it ends; the `store` stage (always run, cheap) rewrites every
fingerprint first from the store it finds. The file holds the store's URI (password masked), the
run ids the stage's outputs cite, the registered models it set (`name@alias` -> run id) and what
of them is missing. While they are all there the bytes are those the stage wrote, so DVC skips
it; a run or alias gone, or another URI, changes them, and DVC runs the stage again.

A run counts when it is active (not deleted) in an active experiment. A SQLite store whose file
does not exist holds nothing (it is not created here).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from finalbn.infra import io
from finalbn.infra.errors import StoreError
from finalbn.tracking.store import client, sqlite_path, tracking_uri

_noted: dict[str, dict] = {"runs": {}, "models": {}}  # this process's runs its outputs do not cite
_BATCH = 100  # run ids per search (`attributes.run_id IN (...)`)


def store_identity(uri: str | None = None) -> str:
    """The tracking URI with any password masked: what a fingerprint records as its store."""
    uri = uri or tracking_uri()
    parts = urlsplit(uri)
    if parts.password:
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return uri


def _is_run_key(key: str) -> bool:
    return key in ("run_id", "run_ids") or key.endswith(("_run_id", "_run_ids"))


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _json_ids(obj) -> Iterable[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from (_strings(v) if _is_run_key(str(k)) else _json_ids(v))
    elif isinstance(obj, list):
        for v in obj:
            yield from _json_ids(v)


def _csv_ids(path: Path) -> Iterable[str]:
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k and _is_run_key(k) and v:
                    yield v


def cited(paths: Iterable[str | os.PathLike]) -> set[str]:
    """The run ids that the JSON and CSV files at `paths` (files, or folders searched whole) cite:
    values of keys or columns named `run_id`, `run_ids`, `*_run_id` or `*_run_ids`."""
    found: set[str] = set()
    for p in map(Path, paths):
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.suffix == ".json" and f.is_file():
                found.update(_json_ids(json.loads(f.read_text(encoding="utf-8"))))
            elif f.suffix == ".csv" and f.is_file():
                found.update(_csv_ids(f))
    return {r for r in found if r.lower() not in ("nan", "none")}


def note_run(run_id: str) -> None:
    """A run this process made that its stage's outputs do not cite (the report's own run)."""
    _noted["runs"][run_id] = True


def note_model(name: str, alias: str, run_id: str) -> None:
    """A registered model this process pointed `alias` at (the export's champion)."""
    _noted["models"][f"{name}@{alias}"] = run_id


def noted() -> tuple[set[str], dict[str, str]]:
    return set(_noted["runs"]), dict(_noted["models"])


def _sqlite_missing(uri: str) -> bool:
    """A SQLite store whose file does not exist (`store.sqlite_path`: as MLflow opens it)."""
    db = sqlite_path(uri)
    return db is not None and not Path(db).exists()


def missing_runs(run_ids: Iterable[str]) -> list[str]:
    """Those of `run_ids` the store does not hold (active, in an active experiment), sorted."""
    want = sorted(set(run_ids))
    if not want:
        return []
    if _sqlite_missing(tracking_uri()):
        return want
    c = client()
    experiments, token = [], None
    while True:  # every active experiment, page by page: runs are found wherever they are
        page = c.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        experiments += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    have: set[str] = set()
    for i in range(0, len(want), _BATCH):
        chunk = want[i : i + _BATCH]
        ids = ", ".join(f"'{r}'" for r in chunk if "'" not in r)
        if not ids or not experiments:
            continue
        token = None
        while True:
            page = c.search_runs(
                experiments, f"attributes.run_id IN ({ids})", ViewType.ACTIVE_ONLY, max_results=1000, page_token=token
            )
            have.update(r.info.run_id for r in page)
            token = page.token
            if not token:
                break
    return [r for r in want if r not in have]


def missing_models(models: dict[str, str]) -> list[str]:
    """Those `name@alias` of `models` whose alias is gone or points at another run's version."""
    if not models:
        return []
    if _sqlite_missing(tracking_uri()):
        return sorted(models)
    c, gone = client(), []
    for ref, run_id in sorted(models.items()):
        name, _, alias = ref.rpartition("@")
        try:
            version = c.get_model_version_by_alias(name, alias)
        except MlflowException:
            gone.append(ref)
            continue
        if version.run_id != run_id:
            gone.append(ref)
    return gone


def _content(runs: Iterable[str], models: dict[str, str]) -> dict:
    runs, models = sorted(set(runs)), dict(sorted(models.items()))
    lost, unset = missing_runs(runs), missing_models(models)
    return {
        "store": store_identity(),
        "runs": runs,
        "models": models,
        "missing_runs": lost,
        "missing_models": unset,
        "complete": not lost and not unset,
    }


def mark(path: str | os.PathLike, runs: Iterable[str], models: dict[str, str] | None = None) -> dict:
    """Write the fingerprint of a stage whose outputs cite `runs` and that set `models`
    ({"name@alias": run id}), as the store holds them now; returns it. Raises StoreError, writing
    nothing, when the store does not show them: the stage just made them, so the check would be
    blind (DVC would then skip the stage whatever happens to its runs)."""
    out = _content(runs, models or {})
    if not out["complete"]:
        lost = out["missing_runs"] + out["missing_models"]
        raise StoreError(
            f"the tracking store {out['store']} does not show {len(lost)} of the runs and aliases this "
            f"stage's outputs cite (e.g. {lost[0]}) right after it made them: is it the store the stage "
            "wrote to? Its fingerprint was not written, so the stage runs again next time"
        )
    io.write_json(path, out)
    return out


def read(path: str | os.PathLike) -> dict:
    """A fingerprint file's content ({} when there is none, or it is not one)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def refresh(path: str | os.PathLike) -> dict:
    """Rewrite the fingerprint at `path` from the store found now (its runs and models kept);
    a file not there yet starts with none. The bytes change only when the answer does."""
    old = read(path)
    out = _content(old.get("runs") or [], old.get("models") or {})
    if out != old:
        io.write_json(path, out)
    return out
