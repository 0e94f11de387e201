"""A search journal torn by a killed worker is mended under Optuna's lock before the study opens."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from finalbn.stages.search.journal import mend, mend_journal
from finalbn.stages.search.study import storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _journal(path: Path, trials: int = 3) -> bytes:
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return path.read_bytes()


def _load(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))


def _append_a_trial(path: Path) -> None:
    _load(path).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)


def test_without_mending_a_torn_record_breaks_the_study_for_good(tmp_path):
    """What the mending is for: Optuna alone, after a partial last line and one more append."""
    path = tmp_path / "journal.log"
    whole = _journal(path)
    path.write_bytes(whole + b'{"op_code":4,"worker_id":"abc","stu')  # killed mid-write
    with pytest.raises(AttributeError):  # the next record lands on the torn line, unreadable
        _append_a_trial(path)
    for _ in range(2):  # and from then on, every open fails
        with pytest.raises(ValueError, match="Expecting"):  # JSONDecodeError
            _append_a_trial(path)
        with pytest.raises(ValueError, match="Expecting"):
            _load(path)
    assert mend_journal(path) is not None  # mending saves even such a journal: whole records kept
    _append_a_trial(path)
    assert len(_load(path).trials) >= 4


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9, 0.999])
def test_a_torn_last_record_at_any_byte_is_cut_kept_aside_and_the_study_goes_on(tmp_path, where):
    path = tmp_path / "journal.log"
    whole = _journal(path)
    last = whole[whole.rstrip(b"\n").rfind(b"\n") + 1 :]
    torn = whole[: len(whole) - len(last)] + last[: int(len(last) * where)]  # the last record cut short
    path.write_bytes(torn)
    note = mend_journal(path)
    assert note is not None and "torn record(s)" in note and len(note.splitlines()) == 1
    aside = list(tmp_path.glob("journal.log.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == last[: int(len(last) * where)] + b"\n"
    assert path.read_bytes() == whole[: len(whole) - len(last)]
    _append_a_trial(path)
    assert len(_load(path).trials) == 4  # the 3 trials (the last one's final record lost), then one more
    assert mend_journal(path) is None  # whole again: nothing to do


def test_a_partial_record_that_ran_into_a_whole_one_keeps_the_whole_one():
    a, b, c = b'{"op_code":0,"x":1}', b'{"op_code":4,"x":2}', b'{"op_code":5,"x":3}'
    good, cut = mend(a + b"\n" + b'{"op_code":6,"wor' + b + b"\n" + c + b"\n")
    assert good == a + b"\n" + b + b"\n" + c + b"\n" and cut == b'{"op_code":6,"wor\n'
    assert mend(a + b"\n") == (a + b"\n", b"")
    assert mend(a + b"\n" + b"\xff\xfe garbage\n" + c + b"\n") == (a + b"\n" + c + b"\n", b"\xff\xfe garbage\n")


def test_mending_waits_for_optunas_lock(tmp_path):
    """A worker holding the lock is mid-write: the mending waits rather than cut a record in flight."""
    path = tmp_path / "journal.log"
    path.write_bytes(_journal(path) + b'{"op_code":4,"wor')
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (mend_journal(path), done.set()))
    worker.start()
    time.sleep(0.5)
    assert not done.is_set() and path.read_bytes().endswith(b'{"op_code":4,"wor')
    lock.release()
    worker.join(timeout=30)
    assert done.is_set() and path.read_bytes().endswith(b"\n")


def test_the_search_storage_mends_before_optuna_opens_it(load, tmp_path, capsys):
    path = tmp_path / "search" / "journal.log"
    path.parent.mkdir()
    path.write_bytes(_journal(path) + b'{"op_code":6,"worker_id":"x","trial_id":2,"sta')
    st = storage(load([f"search.storage={path}"]))
    assert "finalbn search: search journal" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="s", storage=st).trials) == 3
