"""What a kill or a Ctrl-C of a whole process group leaves for a command resumed at once (issue 35):
workers that ended but are not yet reaped count as gone, and a Ctrl-C that lands inside a search
journal's append is raised once the record is written and Optuna's lock released."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import psutil
import pytest
from optuna.storages import JournalStorage

from finalbn.infra import interrupt, io, liveness
from finalbn.stages.search.journal import Backend


def _zombie() -> subprocess.Popen:
    """A child that has ended and that this process has not reaped (as a killed command's workers are,
    until init's next sweep)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.01)
    return proc


def test_an_ended_process_not_yet_reaped_is_gone_and_its_temporary_swept(tmp_path):
    proc = _zombie()
    try:
        who = {"host": socket.gethostname(), "pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
        assert liveness.gone(who) is True  # its run or trial is a dead process's: a resume takes it over at once
        left = tmp_path / f".grid.json.{proc.pid}.0123abcd.tmp"  # what it was writing when it was killed
        left.write_text('{"half": ')
        io.write_json(tmp_path / "grid.json", {"whole": True})
        assert not left.exists() and (tmp_path / "grid.json").read_text() == '{\n  "whole": true\n}\n'
    finally:
        proc.wait()


def test_a_ctrl_c_inside_the_block_is_raised_when_it_ends():
    done = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupt.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler would have run by now
                done.append("the block ran to its end")
        assert done and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_inside_a_journal_append_is_raised_after_it_with_the_record_whole(tmp_path, monkeypatch):
    """Optuna's lock releases by rename then unlink, and on any exception unlinks again: a Ctrl-C just
    after the unlink became a FileNotFoundError (the trial failed with it, the command said "error")."""
    path = tmp_path / "journal.log"
    study = optuna.create_study(storage=JournalStorage(Backend(str(path))), study_name="s")
    real_unlink = os.unlink

    def unlink_then_ctrl_c(name, *args, **kwargs):
        real_unlink(name, *args, **kwargs)
        if str(name).endswith(".rename"):  # the lock's release, done: the Ctrl-C lands right after
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(optuna.storages.journal._file.os, "unlink", unlink_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):  # not FileNotFoundError
            study.ask()
    finally:
        signal.signal(signal.SIGINT, before)
        monkeypatch.undo()
    assert not (tmp_path / "journal.log.lock").exists()  # the lock released
    again = optuna.load_study(study_name="s", storage=JournalStorage(Backend(str(path))))
    assert len(again.trials) == 1  # the record the Ctrl-C met is whole
