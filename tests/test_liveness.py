"""A search trial names its worker and renews its lease; a restart tells a dead worker's trial from
a live one by the process (this host) or the lease (another host), not by the trial's age."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import psutil

from finalbn.stages.search.liveness import LEASE, WORKER, identity, is_dead, lease


def test_this_process_is_alive_and_a_finished_one_is_dead():
    assert is_dead({WORKER: identity()}) is False
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    who = {"host": socket.gethostname(), "pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
    proc.wait()
    assert is_dead({WORKER: who}) is True


def test_a_reused_pid_is_another_process():
    me = identity()
    assert is_dead({WORKER: {**me, "started": me["started"] - 3600}}) is True  # same pid, started an hour apart


def test_another_hosts_worker_lives_while_its_lease_does():
    other = {"host": "node-that-is-not-this-one", "pid": os.getpid(), "started": 0.0}
    assert is_dead({WORKER: other, LEASE: time.time() + 60}) is False
    assert is_dead({WORKER: other, LEASE: time.time() - 1}) is True
    assert is_dead({}) is None and is_dead({WORKER: "?"}) is None  # an older trial: its age decides


def test_the_lease_is_renewed_while_the_trial_runs_and_stops_with_it():
    study = optuna.create_study()
    trial = study.ask()
    with lease(study, trial, every_s=0.05):
        first = study.trials[0].user_attrs[LEASE]
        assert study.trials[0].user_attrs[WORKER]["pid"] == os.getpid()
        time.sleep(0.3)
        renewed = study.trials[0].user_attrs[LEASE]
    assert renewed > first
    time.sleep(0.2)
    assert study.trials[0].user_attrs[LEASE] == renewed  # no renewal after the block
