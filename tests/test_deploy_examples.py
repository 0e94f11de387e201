"""The scale-out examples under deploy/cluster rely on the shard arithmetic: check both."""
from __future__ import annotations

import re
from collections import Counter

import pytest
import yaml

from finalbn import workers
from finalbn.stages import grid

from conftest import ROOT

CLUSTER = ROOT / "deploy" / "cluster"


def _covers(cells, n: int) -> None:
    parts = [grid.shard_cells(cells, i, n) for i in range(n)]
    counts = Counter(c for p in parts for c in p)
    assert set(counts) == set(cells) and set(counts.values()) == {1}  # every cell once
    for p in parts:  # a parent (its replicates) and a UF-off family (a share group) never span two shards
        rest = [c for q in parts if q is not p for c in q]
        assert not {c.family for c in p if not c.family[2]} & {c.family for c in rest}
        assert not {(c.family, c.config_id, c.baseline) for c in p} & \
            {(c.family, c.config_id, c.baseline) for c in rest}


def test_indexed_job_runs_every_shard_once(load):
    job = yaml.safe_load((CLUSTER / "grid-job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    args = " ".join(spec["template"]["spec"]["containers"][0]["args"])
    n = int(re.search(r'\$\{JOB_COMPLETION_INDEX\}/(\d+)', args).group(1))
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
