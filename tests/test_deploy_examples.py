"""The scale-out examples under deploy/cluster rely on the shard arithmetic: check both."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import yaml

from conftest import ROOT
from finalbn.cluster import workers
from finalbn.stages import grid

CLUSTER = ROOT / "deploy" / "cluster"


def _covers(cells, n: int) -> None:
    parts = [grid.shard_cells(cells, i, n) for i in range(n)]
    counts = Counter(c for p in parts for c in p)
    assert set(counts) == set(cells) and set(counts.values()) == {1}  # every cell once
    for p in parts:  # a parent (its replicates) and a UF-off family (a share group) never span two shards
        rest = [c for q in parts if q is not p for c in q]
        assert not {c.family for c in p if not c.family[2]} & {c.family for c in rest}
        assert not {(c.family, c.config_id, c.baseline) for c in p} & {
            (c.family, c.config_id, c.baseline) for c in rest
        }


def test_indexed_job_runs_every_shard_once(load):
    job = yaml.safe_load((CLUSTER / "grid-job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    args = " ".join(spec["template"]["spec"]["containers"][0]["args"])
    n = int(re.search(r"\$\{JOB_COMPLETION_INDEX\}/(\d+)", args).group(1))
    assert spec["completions"] == n and spec["parallelism"] <= n
    _covers(grid.all_cells(load()), n)


def test_slurm_array_runs_every_shard_once(load):
    text = (CLUSTER / "grid.sbatch").read_text()
    lo, hi = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", text).groups())
    n = int(re.search(r"^SHARDS=(\d+)$", text, re.M).group(1))
    assert (lo, hi) == (0, n - 1)
    assert '--shard "${SLURM_ARRAY_TASK_ID}/${SHARDS}"' in text
    _covers(grid.all_cells(load()), n)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 16])
def test_more_shards_than_families_leaves_some_empty_not_broken(load, n):
    cells = grid.all_cells(load())  # the default: 4 UF-off families and 32 UF-on configurations
    _covers(cells, n)
    assert sum(1 for i in range(n) if grid.shard_cells(cells, i, n)) == min(n, 36)


def test_one_gpu_per_local_worker():
    assert workers.gpu_env(3, {"A": "1"}, gpus=2)["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in workers.gpu_env(3, {}, gpus=1)  # one GPU: shared by the workers
    assert "CUDA_VISIBLE_DEVICES" not in workers.gpu_env(0, {}, gpus=0)
    assert workers.gpu_env(1, {"CUDA_VISIBLE_DEVICES": "0,1"}, gpus=2)["CUDA_VISIBLE_DEVICES"] == "0,1"  # the user's


def test_share_order_keeps_share_groups_together(load):
    cells = grid.share_order(grid.all_cells(load()))
    keys = [(c.family, c.replicate) for c in cells]
    seen, prev = set(), None
    for k in keys:  # each (family, replicate) group is one contiguous run
        if k != prev:
            assert k not in seen
            seen.add(k)
            prev = k


def _sets(text: str) -> list[list[str]]:
    """Each `finalbn grid|search --executor ray ...` command's --set overrides (quotes dropped)."""
    out = []
    for cmd in re.findall(r"finalbn (?:grid|search) --executor ray[^&\n]*(?:\n\s+--set[^&\n]*)*", text):
        out.append([s.strip('"') for s in re.findall(r'--set ("[^"]+"|\S+)', cmd)])
    return out


def _packs(sets: list[str], cpus: float) -> None:
    """Tasks asking ray.num_gpus of a GPU and ray.num_cpus CPUs: as many as fit on one GPU find
    their CPUs on the node."""
    kv = dict(s.split("=", 1) for s in sets)
    gpus, task_cpus = float(kv["ray.num_gpus"]), float(kv.get("ray.num_cpus", 1))
    assert 0 < gpus <= 1 and round(1 / gpus) * task_cpus <= cpus


def test_rayjob_runs_the_grid_and_search_as_ray_tasks_on_the_jobs_image(load):
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "RayJob" and spec["shutdownAfterJobFinishes"] is True
    image = yaml.safe_load((CLUSTER / "grid-job.yaml").read_text())["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert {c["image"] for p in pods for c in p["spec"]["containers"]} == {image}  # one image everywhere
    grid_sets, search_sets = _sets(spec["entrypoint"])
    for sets in (grid_sets, search_sets):
        load([s for s in sets if "$" not in s])  # every override is a real params key with a valid value
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    _packs(grid_sets, float(worker["resources"]["requests"]["cpu"]))
    assert any(e["name"] == "MLFLOW_TRACKING_URI" for e in worker["env"])


def test_slurm_starts_a_ray_cluster_in_its_allocation(load):
    text = (CLUSTER / "ray.sbatch").read_text()
    assert "ray start --head" in text and 'ray start --address="${RAY_ADDRESS}"' in text
    cpus = int(re.search(r"#SBATCH --cpus-per-task=(\d+)", text).group(1))
    grid_sets, search_sets = _sets(text)
    for sets in (grid_sets, search_sets):
        load([s for s in sets if "$" not in s])
    _packs(grid_sets, cpus)
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "'.[gpu,cluster]'" in dockerfile and "ray" in (ROOT / "pyproject.toml").read_text()
