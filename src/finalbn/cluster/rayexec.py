"""The Ray executor: the work the local processes do, as Ray tasks on a cluster.

    outcomes = run_tasks(cfg.ray, run_unit, [(cfg, splits, cells), ...], names=["unit 1/7", ...])
    # [result, or TaskFailed(name, reason)] in the order of the calls

Connects to the cluster `ray.address` names (else `RAY_ADDRESS`; else starts a Ray on this machine
for the run and stops it after), submits each call as a task asking `ray.num_cpus` CPUs and
`ray.num_gpus` GPUs (a fraction packs several tasks on one GPU; Ray sets each task's
`CUDA_VISIBLE_DEVICES`), and collects the outcomes as tasks end. A task whose worker process
dies (kill -9, a pre-empted node, the OOM killer) is run again by Ray, up to `ray.max_retries`
times; the work it calls resumes by key, so a retry redoes only what was unfinished. An
exception raised inside a task is not retried: it comes back as a `TaskFailed` naming it.

Tracking travels with the tasks: this process's `MLFLOW_*` and `FINALBN_*` variables are set in
every task's environment (`runtime_env`), and a task runs in this process's working folder where
that folder exists on its node (always on one machine; on a cluster, a shared file system), so
relative paths (`data/splits`, `sqlite:///mlflow.db`) mean the same there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finalbn.config import RayConfig
from finalbn.infra.errors import UsageError

FORWARDED = ("MLFLOW_", "FINALBN_", "DVC_")  # environment variables every task gets


@dataclass(frozen=True)
class TaskFailed:
    """A task that raised, or whose worker died more often than `ray.max_retries` allows."""

    name: str
    reason: str


def _ray():
    try:
        # only with --executor ray: an optional dependency (finalbn[cluster]), ~2 s of imports
        import ray
    except ImportError:
        raise UsageError("the Ray executor needs ray: pip install 'finalbn[cluster]' (or ray>=2.40)") from None
    return ray


def task_threads(rc: RayConfig) -> int:
    """torch threads in a task: the CPUs it asks for, rounded down, at least one."""
    return max(1, int(rc.num_cpus))


def connect(rc: RayConfig) -> bool:
    """Connect to the cluster, or start one here; True when this call started it (stop it after)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    address = rc.address or os.environ.get("RAY_ADDRESS") or None
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # a task's lines in a log file: no colour codes
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": env} if env else None,
            log_to_driver=True,
            include_dashboard=None if address else False,
            configure_logging=False,
        )
    except ConnectionError as exc:
        auth = (
            ""
            if os.environ.get("RAY_AUTH_MODE")
            else " (a cluster with token authentication needs RAY_AUTH_MODE=token here too, and its token in "
            "~/.ray/auth_token or RAY_AUTH_TOKEN)"
        )
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc}{auth}") from None
    where = address or "a Ray on this machine"
    print(
        f"ray: {where}, {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs",
        flush=True,
    )
    return address is None


def _in_folder(fn: Callable[..., Any], folder: str, args: tuple) -> Any:
    """A task's body: `fn(*args)` in `folder` when this node has it."""
    if os.path.isdir(folder):
        os.chdir(folder)
    return fn(*args)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def run_tasks(rc: RayConfig, fn: Callable[..., Any], calls: Sequence[tuple], names: Sequence[str]) -> list[Any]:
    """`fn(*call)` for each call as a Ray task; each call's result or a `TaskFailed`, in order.
    Ctrl-C cancels the tasks (their runs are closed by the next run's resume) and re-raises."""
    ray = _ray()
    started = connect(rc)
    remote = ray.remote(_in_folder)
    folder = os.getcwd()
    refs = {
        remote.options(
            num_cpus=rc.num_cpus, num_gpus=rc.num_gpus, max_retries=rc.max_retries, retry_exceptions=False, name=name
        ).remote(fn, folder, call): i
        for i, (call, name) in enumerate(zip(calls, names))
    }
    out: list[Any] = [None] * len(calls)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = refs[ref]
                try:
                    out[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task raised
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    out[i] = TaskFailed(names[i], f"{type(cause).__name__}: {_line(cause)}")
                except ray.exceptions.RayError as exc:  # its worker died more often than max_retries
                    out[i] = TaskFailed(names[i], f"{type(exc).__name__}: {_line(exc)}")
                if isinstance(out[i], TaskFailed):
                    print(f"ray: {names[i]} failed: {out[i].reason}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
    return out
