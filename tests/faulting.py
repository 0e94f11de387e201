"""Kill it anywhere, run it again at once (tests/test_pipeline.py): the DVC pipeline, stopped at a
point in every stage by SIGKILL or by Ctrl-C twice (to its whole process group, as an OOM killer,
a pre-empted node or a user would), resumes with nothing lost and nothing left RUNNING, and ends
with the outputs of an uninterrupted run. The points are `finalbn.infra.faults.POINTS` (FINALBN_FAULT
stops the stage there).

    log = stop_and_resume(repo)                  # the PLAN on a fresh project; [(point, how, seconds)]
    assert_same_outputs(repo, reference)         # against an uninterrupted run's
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from finalbn.infra import faults

KILL, CTRL_C = "SIGKILL", "Ctrl-C twice"
# (stage, [(point, how), ...]) in pipeline order, every point of finalbn.infra.faults.POINTS: each stop is
# followed at once by the same `dvc repro --single-item <stage>`, which stops at the stage's next
# point, if any, and otherwise must finish (exit 0). The two ways alternate along the pipeline, so
# each stage with two points or more meets both.
PLAN = [
    ("prepare@synthetic-apple", [("prepare.replicate", KILL)]),
    ("ceiling@synthetic-apple", [("ceiling.run", CTRL_C)]),
    ("grid", [("grid.cell", KILL), ("grid.between", CTRL_C)]),
    ("search", [("search.cell", KILL), ("search.compare", CTRL_C)]),
    ("sensitivity", []),  # its levels are `finalbn grid` processes (the grid's points); the tiny pipeline has none
    ("needs", []),  # its counts run the grid's core (the grid's points, tested there)
    ("report", [("report.write", KILL)]),
    ("export", [("export.cell", CTRL_C), ("export.onnx", KILL), ("export.register", CTRL_C)]),
]
RUN_ID = re.compile(r"run_id|run_ids|^best_trial$|^number$|tied_on_objective|config_key")


def _env(**extra: str) -> dict[str, str]:
    """The environment of a stopped stage: this one's (its MLFLOW_TRACKING_URI, if any, names the store)."""
    env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.READY)}
    return {**env, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", **extra}


def _start(repo: Path, stage: str, **env: str) -> subprocess.Popen:
    """`dvc repro --single-item <stage>` in its own process group, SIGINT at its default."""
    # PYTHONFAULTHANDLER: a process that does not end is made to print where it is (SIGABRT) before it is
    # killed. SIGINT back to its default, as a terminal has it: a pytest-xdist worker ignores it, and a
    # process started with SIGINT ignored (nohup, a background job) rightly keeps ignoring Ctrl-C
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", stage],
        cwd=repo,
        env=_env(PYTHONFAULTHANDLER="1", **env),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _signal(proc: subprocess.Popen, how: str, what: str) -> str:
    """SIGKILL to `proc`'s process group, or SIGINT twice; its output once it has ended (a group
    still running 120 s later is made to print where it is, then killed, and fails the test)."""
    try:
        if how == KILL:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.3)  # the second one lands while the first one's runs are being closed
            os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            tree = subprocess.run(
                ["ps", "-o", "pid,ppid,stat,etime,cmd", "-g", str(proc.pid)], capture_output=True, text=True
            ).stdout
            os.killpg(proc.pid, signal.SIGABRT)
            out, _ = proc.communicate(timeout=60)
            raise AssertionError(f"{what} ({how}): still running 120 s later\n{tree}\n{out[-20000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stop_at(repo: Path, stage: str, point: str, how: str) -> str:
    """`dvc repro <stage>` stopped at `point`: its process group killed, or sent SIGINT twice."""
    ready = repo / ".fault-ready"
    ready.unlink(missing_ok=True)
    proc = _start(repo, stage, **{faults.ENV: point, faults.READY: str(ready)})
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert proc.poll() is None, f"{stage} ended before {point}:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, f"{point} not reached in 300 s"
            time.sleep(0.1)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    out = _signal(proc, how, point)
    if how == KILL:
        assert proc.returncode == -signal.SIGKILL, out
    else:
        assert proc.returncode != 0 and "Traceback" not in out, out
        line = next((ln for ln in out.splitlines() if "interrupted; " in ln), None)
        assert line and "files already written are whole" in line, out
    return out


def _whole(repo: Path) -> None:
    """Every output that exists is whole: JSON parses, CSV reads, a PNG ends with its IEND chunk."""
    for path in [
        *repo.glob("results/**/*"),
        *repo.glob("report/**/*"),
        *repo.glob("models/*"),
        *repo.glob("data/splits/**/*"),
    ]:
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".png":
            assert path.read_bytes()[-8:-4] == b"IEND", path


def _settled(repo: Path) -> None:
    """No MLflow run and no Optuna trial RUNNING, no temporary file left, one registered version
    per exported model file, one FINISHED run per grid cell (the store: MLFLOW_TRACKING_URI, or
    the repo's mlflow.db)."""
    client = mlflow.MlflowClient(
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo / 'mlflow.db'}"
    )
    exps = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(exps, "attributes.status = 'RUNNING'") if exps else []
    assert not running, [(r.info.run_name, r.data.tags.get("stage")) for r in running]
    journal = repo / "results" / "search" / "journal.log"
    if journal.exists():
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        for s in optuna.get_all_study_summaries(storage):
            trials = optuna.load_study(study_name=s.study_name, storage=storage).trials
            assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    leftovers = [p for d in ("results", "report", "models", "data") for p in (repo / d).rglob(".*.tmp")]
    assert not leftovers, leftovers
    try:
        versions = client.search_model_versions("name = 'finalbn'")
    except mlflow.exceptions.MlflowException:
        versions = []
    digests = [v.tags.get("onnx_sha256") for v in versions]
    assert len(digests) == len(set(digests)), digests
    grid = client.get_experiment_by_name("finalbn/grid")
    if grid is not None:  # one FINISHED run per cell, however often a cell was killed
        keys = [
            r.data.tags["cell_key"]
            for r in client.search_runs(
                [grid.experiment_id],
                max_results=5000,
                filter_string="attributes.status = 'FINISHED' and tags.`finalbn.cell` = 'true'",
            )
        ]
        assert len(keys) == len(set(keys)), keys


def _strip(obj):
    """A JSON value without its run ids and trial numbers (they differ between two runs of the same study)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not RUN_ID.search(k)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _unpinned(card: dict) -> dict:
    """A model card without its ONNX file's digest: an export retrains its model, and torch's CPU
    kernels round the last bits differently from one process to the next, so the same model's
    file differs in a few bytes (parity and every number of the card are compared)."""
    return {**card, "onnx": {k: v for k, v in card["onnx"].items() if k != "sha256"}}


def _rounded(obj, digits: int = 6):
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, float):
        return round(obj, digits)
    return obj


def _grid(repo: Path) -> pd.DataFrame:
    grid = pd.read_csv(repo / "results" / "grid.csv").drop(columns=["run_id"])
    return grid.sort_values(["config_id", "baseline", "replicate"], na_position="first").reset_index(drop=True)


def _search(repo: Path) -> dict:
    search = json.loads((repo / "results" / "search.json").read_text())
    return _strip(
        {"best": search["best"], "comparison": search["comparison"], "complete": search["states"]["complete"]}
    )


def _json(repo: Path, path: str) -> dict:
    return json.loads((repo / path).read_text())


# what must not depend on interruptions: split manifests, the ceiling, the grid's and the search's numbers,
# the report's headline, the exported model's card and parity (|Δ| ~1e-7 varies: rounded)
OUTPUTS_COMPARED = {
    "manifests": lambda r: {str(p.relative_to(r)): p.read_bytes() for p in sorted(r.glob("data/splits/**/*.csv"))},
    "ceiling": lambda r: _strip(_json(r, "results/ceiling/synthetic-apple.json")),
    "grid": _grid,
    "search": _search,
    "report": lambda r: _strip(
        {"metrics": _json(r, "report/summary.json")["metrics"], "headline": _json(r, "report/headline.json")}
    ),
    "model": lambda r: _strip(_unpinned(_json(r, "models/model.json"))),
    "parity": lambda r: _rounded(_strip(_json(r, "models/parity.json"))),
    "metrics": lambda r: _json(r, "models/metrics.json"),
}


def _outputs(repo: Path, only: tuple[str, ...] | None = None) -> dict:
    """`OUTPUTS_COMPARED` of `repo` (or its keys `only`)."""
    return {key: read(repo) for key, read in OUTPUTS_COMPARED.items() if only is None or key in only}


def stop_and_resume(repo: Path, repro) -> list[str]:
    """The PLAN on `repo` (`repro(repo, *args)` runs `dvc repro *args` and checks exit 0): after each
    stage, every output whole and the store settled. The `store` stage (every `dvc repro`'s first:
    does the MLflow store hold what the outputs cite?) runs once, first; each stop and resume then
    runs its stage alone (`--single-item`), the stages before it being done: the store's check once
    instead of twenty times, and each stage rewrites its own fingerprint as it ends."""
    assert [p for _, points in PLAN for p, _ in points] == list(faults.POINTS)  # every point, in order
    repro(repo, "synthesize")
    repro(repo, "--single-item", "store")
    log = []
    for stage, points in PLAN:
        for point, how in points:
            t0 = time.monotonic()
            _stop_at(repo, stage, point, how)
            _whole(repo)
            log.append(f"{point} ({how}): stopped after {time.monotonic() - t0:.0f} s")
        repro(repo, "--single-item", stage)  # at once: finishes
        _whole(repo)
        _settled(repo)
    return log


def assert_same_outputs(repo: Path, reference: Path, only: tuple[str, ...] | None = None) -> None:
    """`repo`'s outputs (`_outputs`: all of them, or the keys `only`) equal `reference`'s."""
    got, want = _outputs(repo, only), _outputs(reference, only)
    if "grid" in want:
        pd.testing.assert_frame_equal(got.pop("grid"), want.pop("grid"), check_exact=False, atol=1e-6)
    for key in want:
        assert got[key] == want[key], key


# Kills at random instants (the short version in tests/test_pipeline.py, the long one in
# benchmarks/random_kills.py): FINALBN_KILL_SEED pins the seed a failure names, FINALBN_KILL_DRAWS the
# number of draws per stage
SEED, DRAWS = "FINALBN_KILL_SEED", "FINALBN_KILL_DRAWS"
# each stage and what it writes last, in pipeline order: a stage's span in an uninterrupted `dvc repro` is
# the time from the end of the one before (its outputs' last change) to its own end
OUTPUTS = [
    ("synthesize", "data/raw"),
    ("prepare@synthetic-apple", "data/splits"),
    ("ceiling@synthetic-apple", "results/ceiling"),
    ("grid", "results/grid.*"),
    ("search", "results/search.json"),
    ("sensitivity", "results/sensitivity"),
    ("needs", "results/needs"),
    ("report", "report"),
    ("export", "models"),
]


def _last_change(repo: Path, pattern: str) -> float:
    paths = [q for p in repo.glob(pattern) for q in ([p, *p.rglob("*")] if p.is_dir() else [p])]
    return max(p.stat().st_mtime for p in paths)


def spans(repo: Path) -> dict[str, float]:
    """Each stage's wall seconds in `repo`'s uninterrupted `dvc repro` (read from its outputs'
    modification times right after it: the `store` stage's check is counted in the ceiling's)."""
    ends = [(stage, _last_change(repo, pattern)) for stage, pattern in OUTPUTS]
    return {stage: end - before for (_, before), (stage, end) in zip(ends, ends[1:])}


def kill_seed() -> int:
    """FINALBN_KILL_SEED, or a new seed for each run (so that runs explore new instants; a failure names it)."""
    return int(os.environ.get(SEED) or random.SystemRandom().randrange(10**6))


def _kill_after(repo: Path, stage: str, at: float, how: str, what: str) -> tuple[bool, str]:
    """`dvc repro --single-item <stage>` killed `at` seconds after its start (SIGKILL to its process
    group, or SIGINT twice), wherever it then is; (whether it was still running, its output)."""
    proc = _start(repo, stage)
    try:
        proc.wait(timeout=at)
    except subprocess.TimeoutExpired:
        out = _signal(proc, how, what)
        if how == KILL:
            assert proc.returncode in (-signal.SIGKILL, 0), f"{what}: exit {proc.returncode}\n{out}"
        return True, out
    out = proc.stdout.read()
    assert proc.returncode == 0, f"{what}: exit {proc.returncode} before it was killed\n{out}"
    return False, out


# what each stage writes, among OUTPUTS_COMPARED (the sensitivity's table is empty in the tiny pipeline)
OF_STAGE = {
    "prepare@synthetic-apple": ("manifests",),
    "ceiling@synthetic-apple": ("ceiling",),
    "grid": ("grid",),
    "search": ("search",),
    "sensitivity": (),
    "needs": (),
    "report": ("report",),
    "export": ("model", "parity", "metrics"),
}


def _restore(snapshot: Path, repo: Path) -> None:
    """`repo` as `snapshot` holds it (the same path: MLflow's artifact locations and DVC's state stay valid)."""
    shutil.rmtree(repo)
    shutil.copytree(snapshot, repo, symlinks=True)


def random_kills(
    repo: Path,
    reference: Path,
    spans_s: dict[str, float],
    draws: int,
    seed: int,
    repro,
    stages: tuple[str, ...] | None = None,
) -> list[str]:
    """The pipeline on `repo` stage by stage (the `store` stage's check once, first, as in
    `stop_and_resume`): every stage after `synthesize`, or only `stages` (in pipeline order; those
    before them already done, as a copy that kept its splits has them). Each stage of `spans_s` is
    killed `draws` times, each time from the state before it (a copy of `repo` put back), so that
    the draws are independent: `dvc repro --single-item <stage>` started and killed at an instant
    drawn uniformly over the stage's span in an uninterrupted `dvc repro` (`spans`, from a run with
    as many workers or more) plus DVC's own start-up (a `dvc repro --single-item` starts DVC again:
    measured as the `store` stage's run, DVC's start-up and a light check), so that the draws cover
    the stage's whole run, start-up and last write included, at the price of some landing after it
    has finished; SIGKILL to its process group or Ctrl-C twice, drawn too. After each kill every
    output is whole; then the stage is run again at once and must finish with the store settled
    (`_settled`) and its outputs equal to `reference`'s (`OF_STAGE`). Draws come from
    random.Random(seed): a failure names the seed and the draw. Returns a line per draw."""
    rng, log = random.Random(seed), []
    if stages is None:
        repro(repo, "synthesize")
    t0 = time.monotonic()
    repro(repo, "--single-item", "store")
    startup = time.monotonic() - t0
    snapshot = repo.parent / f".{repo.name}.before"
    for stage, _ in OUTPUTS[1:]:
        if stages is not None and stage not in stages:
            continue
        span = spans_s.get(stage)
        if span is not None and draws > 1:
            shutil.rmtree(snapshot, ignore_errors=True)
            shutil.copytree(repo, snapshot, symlinks=True)
        for k in range(draws if span is not None else 1):
            if k:
                _restore(snapshot, repo)
            what = f"{stage}: resumed"
            try:
                if span is not None:
                    at, how = rng.uniform(0.0, span + startup), rng.choice((KILL, CTRL_C))
                    what = f"{stage}: draw {k + 1}/{draws} of seed {seed} ({how} at {at:.2f} s; {SEED}={seed} {DRAWS}={draws})"
                    killed, out = _kill_after(repo, stage, at, how, what)
                    _whole(repo)
                    last = next((ln.strip() for ln in reversed(out.splitlines()) if ln.strip()), "")  # where it was
                    log.append(f"{what}: " + (f"killed after: {last[:100]}" if killed else "finished first"))
                repro(repo, "--single-item", stage)  # at once: finishes
                _whole(repo)
                _settled(repo)
                assert_same_outputs(repo, reference, only=OF_STAGE[stage])
            except Exception as exc:
                raise AssertionError(f"{what}: {exc}") from exc
    shutil.rmtree(snapshot, ignore_errors=True)
    return log
