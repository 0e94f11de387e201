"""Kills at random instants of a process that writes with `finalbn.infra.io` (issue 35): after each, every
file it was writing is the previous whole one or the new whole one, and the next write leaves no
temporary of the dead process.

    FINALBN_KILL_SEED=1234 FINALBN_KILL_DRAWS=500 pytest tests/test_atomic_kills.py -k random
    python benchmarks/random_kills_io.py --draws 500 --seed 1234        # the long version, a summary

Draw k of seed S (`random.Random(f"{S}:{k}")`): a fresh writer process (`python tests/killing.py
write ROOT`, no torch: it starts in a tenth of a second) rewrites the targets in a loop; once it
says it is writing, the harness waits a drawn share of a round of writes (0 to 1.25 of the time
one round takes this process) and sends SIGKILL, or, for a quarter of the draws, SIGINT to the
writer's process group (a Ctrl-C). Then every target must be whole (the SIGKILL that falls between
replace_dir's two renames may leave its documented state instead), and after one more round of
writes by this process (the next write sweeps a dead writer's temporaries) no temporary may be left.
A failure's message names its seed and draw: the same seed repeats the same signals at the same
shares of a round; where in its bytes the writer then is varies a little with the machine's load.

The targets, each written the way the project writes such a file and each telling a truncated or
mixed file from a whole one by a checksum over its content:
- data.json (2 MB): `io.write_json`, {"n": round, "rows": [...], "sha": sha256 of the rows};
- stream.bin (2 MB): `io.atomic_path` and a file written 64 KiB at a time as it is produced (as
  `torch.save` or a PNG encoder does), its last line the sha256 of what precedes it;
- table.csv: `io.write_csv` of a stand-in for a DataFrame (its `to_csv(index=False)`; importing
  pandas would cost each writer a second), its last row the sha256 of the rows above;
- bundle/: `io.temporary_dir` + `io.replace_dir` (as prepare writes a data set's splits), three
  parts and a manifest.json naming the round and each part's sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from finalbn.infra import io

DEFAULT_SEED, DEFAULT_DRAWS = 1234, 24
SIGINT_SHARE = 0.25  # the share of draws that send SIGINT to the process group instead of SIGKILL
_HEX = random.Random(0).randbytes(45 * 20000).hex()
ROWS = [_HEX[i : i + 90] for i in range(0, len(_HEX), 90)]  # 20,000 rows of 90 characters
CHUNK, CHUNKS = 1 << 16, 32
PARTS = ("part-0.bin", "part-1.bin", "part-2.bin")
TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}(\.aside)?\.tmp$")  # io.temporary_name's


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class Table:
    """What `io.write_csv` needs of a DataFrame."""

    def __init__(self, n: int):
        self.lines = ["n,i,value"] + [f"{n},{i},{r}" for i, r in enumerate(ROWS[:5000])]

    def to_csv(self, index: bool = True) -> str:
        assert index is False
        body = "\n".join(self.lines) + "\n"
        return body + f"sha256,-1,{_sha(body)}\n"


def write_round(root: Path, n: int) -> None:
    """Every target once, holding round `n`."""
    rows = [f"{n:08d}{r}" for r in ROWS]
    io.write_json(root / "data.json", {"n": n, "rows": rows, "sha": _sha("\n".join(rows))})
    with io.atomic_path(root / "stream.bin") as tmp, open(tmp, "wb") as fh:
        digest = hashlib.sha256(b"%d\n" % n)
        fh.write(b"%d\n" % n)
        for i in range(CHUNKS):
            chunk = random.Random(f"{n}:{i}").randbytes(CHUNK)
            digest.update(chunk)
            fh.write(chunk)
            fh.flush()
        fh.write(digest.hexdigest().encode() + b"\n")
    io.write_csv(root / "table.csv", Table(n))
    with io.temporary_dir(root / "bundle") as tmp:
        parts = {name: b"%d\n" % n + random.Random(f"{n}:{name}").randbytes(1 << 18) for name in PARTS}
        for name, data in parts.items():
            (tmp / name).write_bytes(data)
        (tmp / "manifest.json").write_text(json.dumps({"n": n, "parts": {k: _sha(v) for k, v in parts.items()}}))
        io.replace_dir(tmp, root / "bundle")


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1024:.0f} KiB"


def _check_json(path: Path) -> str | None:
    try:
        obj = json.loads(path.read_text())
    except ValueError as exc:
        return f"{path.name} truncated at {_size(path)} (does not parse: {str(exc)[:60]})"
    if _sha("\n".join(obj["rows"])) != obj["sha"] or any(not r.startswith(f"{obj['n']:08d}") for r in obj["rows"]):
        return f"{path.name} mixed: its rows do not match its checksum (round {obj['n']})"
    return None


def _check_stream(path: Path) -> str | None:
    data = path.read_bytes()
    body, tail = data[:-65], data[-65:]
    whole = len(data.split(b"\n", 1)[0]) + 1 + CHUNK * CHUNKS
    if len(body) != whole or tail != _sha(body).encode() + b"\n":
        return f"{path.name} truncated or mixed at {_size(path)} (whole: {whole // 1024} KiB and a checksum line)"
    return None


def _check_csv(path: Path) -> str | None:
    text = path.read_text()
    body, _, last = text.rstrip("\n").rpartition("\n")
    if not last.startswith("sha256,-1,") or last.split(",")[2] != _sha(body + "\n"):
        return f"{path.name} truncated or mixed at {_size(path)} (its last row is not the checksum of the rows above)"
    return None


def _check_bundle(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if sorted(p.name for p in folder.iterdir()) != sorted([*PARTS, "manifest.json"]):
            return f"{folder.name}/ holds {sorted(p.name for p in folder.iterdir())}"
        for name in PARTS:
            data = (folder / name).read_bytes()
            if _sha(data) != manifest["parts"][name] or not data.startswith(b"%d\n" % manifest["n"]):
                return f"{folder.name}/{name} does not agree with its manifest.json (round {manifest['n']})"
    except (OSError, ValueError, KeyError) as exc:
        return f"{folder.name}/ is not whole: {exc!r}"
    return None


def _wrote(root: Path) -> bool:
    """Whether a target holds a writer's round (the harness writes round 0)."""
    rounds = []
    for name, head in (
        ("data.json", rb'\{\s*"n": (\d+)'),
        ("stream.bin", rb"(\d+)\n"),
        ("table.csv", rb"n,i,value\n(\d+),"),
        ("bundle/manifest.json", rb'\{\s*"n": (\d+)'),
    ):
        with contextlib.suppress(OSError), open(root / name, "rb") as fh:
            if m := re.match(head, fh.read(100)):
                rounds.append(int(m[1]))
    return any(rounds)


def temporaries(root: Path, pid: int | None = None) -> list[Path]:
    """`io.temporary_name`s in `root` (of process `pid` when given)."""
    return sorted(p for p in root.iterdir() if (m := TMP.match(p.name)) and (pid is None or int(m["pid"]) == pid))


def _between_renames(root: Path, pid: int) -> bool:
    """replace_dir's documented state when its process is killed between its two renames: no bundle/,
    the old one renamed aside and the new one beside it, both whole (the next temporary_dir moves the old one back and sweeps the new one)."""
    aside = [p for p in temporaries(root, pid) if p.name.startswith(".bundle.") and p.is_dir()]
    return len(aside) == 2 and not any(map(_check_bundle, aside))


def check(root: Path, killed: int, sig: int) -> list[str]:
    """What is wrong with the targets after the writer `killed` got `sig`; [] when all are whole."""
    problems = []
    for name, checker in (
        ("data.json", _check_json),
        ("stream.bin", _check_stream),
        ("table.csv", _check_csv),
        ("bundle", _check_bundle),
    ):
        if not (root / name).exists():
            if name == "bundle" and sig == signal.SIGKILL and _between_renames(root, killed):
                continue
            problems.append(f"{name} is missing")
        elif (problem := checker(root / name)) is not None:
            problems.append(problem)
    return problems


def wait_line(proc: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        return proc.stdout.readline().strip() if sel.select(timeout) else ""


def _writer(root: Path) -> subprocess.Popen:
    """A writer process of `root`'s targets, started (its imports done) and waiting for "go"."""
    return subprocess.Popen(
        [sys.executable, __file__, "write", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C as a user's shell delivers it, whatever this test process inherited (an ignored SIGINT
        # is inherited across exec, and a driver library in an earlier test of this worker may leave it so)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def draw(
    root: Path, seed: int, k: int, round_s: float, proc: subprocess.Popen, meanwhile=lambda: None
) -> tuple[list[str], int, bool]:
    """Draw `k` of `seed`: the writer `proc` told to go and killed at the drawn instant, then
    `meanwhile()` (the next draw's writer starts), then the checks. Returns the problems found, how
    many temporaries the dead writer left (swept by the next write) and whether it had replaced a
    target before it died."""
    rng = random.Random(f"{seed}:{k}")
    sig = signal.SIGINT if rng.random() < SIGINT_SHARE else signal.SIGKILL
    phase, name = rng.uniform(0, 1.25), signal.Signals(sig).name  # when, in rounds of writes
    delay = phase * round_s
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if wait_line(proc, 60) != "writing":
            return [f"the writer did not start: {proc.communicate(timeout=60)[1][-2000:]}"], 0, False
        time.sleep(delay)
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.kill()
        err = proc.communicate(timeout=60)[1]  # reaped: a zombie would count as alive to io.sweep
        if proc.returncode != -sig:  # it stopped of itself (a bug in the writer): nothing was tested
            return [f"the writer exited {proc.returncode} before the {name}: {err[-2000:]}"], 0, False
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"the writer did not stop within 60 s of {name} ({exc!r})"], 0, False
    finally:
        proc.kill()
        proc.wait()
        meanwhile()
    problems, left, wrote = check(root, proc.pid, sig), len(temporaries(root, proc.pid)), _wrote(root)
    write_round(root, 0)  # the next write of each target: sweeps what the dead writer left
    problems += [f"{p.name} left after the next write" for p in temporaries(root)]
    return [f"{name} {phase:.2f} rounds ({delay * 1000:.0f} ms) into the writes: {p}" for p in problems], left, wrote


def seed_and_draws() -> tuple[int, int]:
    """FINALBN_KILL_SEED and FINALBN_KILL_DRAWS, or the defaults (`make test`'s short version)."""
    env = os.environ
    return int(env.get("FINALBN_KILL_SEED", DEFAULT_SEED)), int(env.get("FINALBN_KILL_DRAWS", DEFAULT_DRAWS))


def run(root: Path, seed: int, draws: int, stop_at_first: bool = True) -> tuple[list[str], dict]:
    """`draws` kills of seed `seed` (stopping at the first that finds something, when told): the
    failure messages, each naming its seed and draw, and what the draws did: `draws` run,
    `mid_write` (those whose dead writer left a temporary: the kill fell inside a write), `wrote`
    (those whose writer had replaced a target with its own before it died), `round_s`
    (how long one round of writes took this process: the unit of the delays)."""
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_round(root, 0)  # the previous content every draw starts from
    stats = {"draws": 0, "mid_write": 0, "wrote": 0, "round_s": time.perf_counter() - start}
    failures: list[str] = []
    writers = [_writer(root)]  # the next draw's starts while a draw's files are checked
    try:
        for k in range(draws):
            problems, left, wrote = draw(
                root, seed, k, stats["round_s"], writers[-1], lambda: writers.append(_writer(root))
            )
            stats["draws"] = k + 1
            stats["mid_write"], stats["wrote"] = stats["mid_write"] + (left > 0), stats["wrote"] + wrote
            failures += [
                f"draw {k} of seed {seed} (FINALBN_KILL_SEED={seed} FINALBN_KILL_DRAWS={k + 1}): {p}" for p in problems
            ]
            if failures and stop_at_first:
                break
    finally:
        writers[-1].kill()
        writers[-1].communicate()
    return failures, stats


def _write_forever(root: Path) -> None:
    sys.stdin.readline()  # "go"
    print("writing", flush=True)
    n = os.getpid() * 1000
    while True:
        n += 1
        write_round(root, n)


if __name__ == "__main__" and sys.argv[1] == "write":
    _write_forever(Path(sys.argv[2]))
