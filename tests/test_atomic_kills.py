"""`finalbn.infra.io`'s atomic writes under a kill (issue 35): between their steps, half-way through a
temporary, and at random instants (tests/killing.py).

A writer is a child process that imports only `finalbn.infra.io` (no torch: it starts in a tenth of a
second). The step it stops at is made visible without touching the product: the child wraps its
own `os.replace` / `os.rename` (or writes its temporary itself) to print "ready" and sleep there,
and the test sends the signal then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from finalbn.infra import io
from killing import run, seed_and_draws, temporaries, wait_line

PROLOGUE = """
import os, sys, time
from pathlib import Path
from finalbn.infra import io
target = Path(sys.argv[1])
def pause():  # the step is reached: say so, and wait for the test's signal
    print("ready", flush=True)
    time.sleep(120)
    sys.exit("not killed")
"""
NEW = {"version": "new", "rows": list(range(100_000))}
STEPS = {
    # write_json, stopped just before its temporary is moved over the target
    "before os.replace": """
real = os.replace
def replace(src, dst):
    if Path(dst) == target:
        pause()
    return real(src, dst)
os.replace = replace
io.write_json(target, {"version": "new", "rows": list(range(100_000))})
""",
    # a file written as it is produced (torch.save, a PNG), stopped half-way through
    "half-way": """
with io.atomic_path(target) as tmp, open(tmp, "w") as fh:
    fh.write('{"version": "new", "rows": [0')
    for i in range(1, 400_000):
        fh.write(f", {i}")
        if i == 200_000:
            fh.flush()
            pause()
    fh.write("]}\\n")
""",
    # temporary_dir + replace_dir (prepare's splits), stopped as the new folder is about to move in:
    # the old one is renamed aside already
    "between replace_dir's renames": """
real, moved_in = os.rename, []
def rename(src, dst):
    if Path(dst) == target and not moved_in:  # the first move in, not a move back
        moved_in.append(src)
        pause()
    return real(src, dst)
os.rename = rename
with io.temporary_dir(target) as tmp:
    (tmp / "a.txt").write_text("new a")
    (tmp / "b.txt").write_text("new b")
    io.replace_dir(tmp, target)
""",
}
OLD_DIR, NEW_DIR = {"a.txt": "old a", "b.txt": "old b"}, {"a.txt": "new a", "b.txt": "new b"}


def _stopped_at(step: str, target: Path) -> subprocess.Popen:
    """A writer of `target` waiting at `step` (its own process group: a Ctrl-C reaches it alone)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PROLOGUE + STEPS[step], str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as a user's shell delivers it, whatever this test process inherited (an ignored SIGINT
        # is inherited across exec, and a driver library in an earlier test of this worker may leave it so)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    line = wait_line(proc, 60)
    if line != "ready":
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the writer never reached {step!r} (it ended, exit {proc.returncode}): {line}{out}{err[-1500:]}")
    return proc


def _signal(proc: subprocess.Popen, sig: int) -> None:
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.kill()
    proc.communicate(timeout=60)  # reaped: a zombie still counts as alive to io.sweep


def _write_elsewhere(code: str, target: Path) -> None:
    """`code` run by another process (the next write of the target)."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; import sys\nfrom finalbn.infra import io\ntarget = Path(sys.argv[1])\n{code}",
            str(target),
        ],
        check=True,
        timeout=60,
    )


def _json(path: Path) -> object:
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError:
        pass
    pytest.fail(f"{path.name} is not whole: {len(text) / 1024:.0f} KiB that do not parse ({text[:30]}...{text[-30:]})")


def _folder(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in path.iterdir()}


def test_a_kill_before_the_temporary_is_moved_in_leaves_the_old_file_and_the_next_write_sweeps_it(tmp_path):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"version": "old"})
    proc = _stopped_at("before os.replace", target)
    _signal(proc, signal.SIGKILL)
    assert _json(target) == {"version": "old"}
    [tmp] = temporaries(tmp_path, proc.pid)
    assert _json(tmp) == NEW  # the new content went whole to the temporary, not the target
    _write_elsewhere('io.write_json(target, {"version": "next"})', target)
    assert _json(target) == {"version": "next"}
    assert temporaries(tmp_path) == [], "left after the next write"


def test_a_kill_half_way_through_leaves_the_old_file_and_its_temporary_is_kept_while_alive_swept_once_dead(tmp_path):
    target = tmp_path / "weights.json"
    io.write_json(target, {"version": "old"})
    proc = _stopped_at("half-way", target)
    assert _json(target) == {"version": "old"}
    [tmp] = temporaries(tmp_path, proc.pid)
    assert tmp.stat().st_size > 1_000_000 and tmp.read_text().startswith('{"version": "new"')  # half of it
    _write_elsewhere('io.write_json(target, {"version": "other"})', target)  # while the first one writes
    assert _json(target) == {"version": "other"} and tmp.exists()  # a live writer's: kept
    _signal(proc, signal.SIGKILL)
    assert _json(target) == {"version": "other"} and tmp.exists()
    _write_elsewhere('io.write_json(target, {"version": "next"})', target)
    assert _json(target) == {"version": "next"}
    assert temporaries(tmp_path) == [], "left after the next write"


def test_a_kill_between_replace_dirs_renames_leaves_the_old_folder_aside_and_the_next_temporary_dir_moves_it_back(
    tmp_path,
):
    """replace_dir killed between its renames: no folder at `dest`, the old one renamed aside and the new
    one beside it, both whole; the next temporary_dir(dest) moves the old one back (nothing already
    produced is lost) and removes the new one's remains."""
    target = tmp_path / "splits"
    target.mkdir()
    for name, text in OLD_DIR.items():
        (target / name).write_text(text)
    proc = _stopped_at("between replace_dir's renames", target)
    _signal(proc, signal.SIGKILL)
    assert not target.exists()
    aside = temporaries(tmp_path, proc.pid)
    assert sorted(map(_folder, aside), key=str) == [NEW_DIR, OLD_DIR], "the old folder and the new one, whole"
    _write_elsewhere("with io.temporary_dir(target): pass", target)
    assert target.is_dir() and _folder(target) == OLD_DIR, "the old folder is back where it was"
    assert temporaries(tmp_path) == [], "left after the next temporary_dir"


@pytest.mark.parametrize("step", list(STEPS))
def test_a_ctrl_c_at_each_step_leaves_the_old_content_whole_and_no_temporary(tmp_path, step):
    """SIGINT (KeyboardInterrupt) runs the writer's clean-up: the target as it was, nothing left to sweep."""
    folder = step.startswith("between")
    target = tmp_path / ("splits" if folder else "grid.json")
    if folder:
        target.mkdir()
        for name, text in OLD_DIR.items():
            (target / name).write_text(text)
    else:
        io.write_json(target, {"version": "old"})
    proc = _stopped_at(step, target)
    _signal(proc, signal.SIGINT)
    assert proc.returncode == -signal.SIGINT  # died of the Ctrl-C (KeyboardInterrupt), not of anything else
    assert target.exists(), f"{target.name} gone after a Ctrl-C, left: {[p.name for p in temporaries(tmp_path)]}"
    assert (_folder(target) == OLD_DIR) if folder else (_json(target) == {"version": "old"})
    assert temporaries(tmp_path) == [], "left by the writer's clean-up"


@pytest.mark.slow
def test_kills_at_random_instants_leave_every_target_whole_and_the_next_write_no_temporary(tmp_path):
    """Draws of tests/killing.py: FINALBN_KILL_SEED and FINALBN_KILL_DRAWS repeat a failure's draw."""
    seed, draws = seed_and_draws()
    failures, stats = run(tmp_path, seed, draws)
    assert not failures, failures[0]
    if draws >= 10:  # the writers wrote before they died (each died of the signal: `draw` checks it)
        assert stats["wrote"] > 0, stats
