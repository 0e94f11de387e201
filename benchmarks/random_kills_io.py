"""The long version of the random-kill test of `finalbn.infra.io`'s atomic writes (tests/killing.py).

    .venv/bin/python benchmarks/random_kills_io.py --draws 500 --seed 1234
    .venv/bin/python benchmarks/random_kills_io.py --draws 500 --seed 1234 --stop-at-first

Each draw starts a writer process that rewrites a JSON file, a file written in chunks, a CSV and a
folder with `finalbn.infra.io`, kills it at a drawn instant (SIGKILL, or SIGINT to its process group for
a quarter of the draws), and checks that every file is whole and that the next write leaves no
temporary behind. Prints each failure (its message names the seed and the draw that repeat it:
FINALBN_KILL_SEED / FINALBN_KILL_DRAWS for `pytest tests/test_atomic_kills.py -k random`) and a
summary: draws run, failures found, draws whose writer had replaced a file before it died and
those whose kill fell inside a write, time. Exits 1 when any
draw failed. About half a second a draw (a process start and a round of writes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import killing  # noqa: E402  (tests/killing.py: the harness the test runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--seed", type=int, default=killing.DEFAULT_SEED)
    ap.add_argument("--stop-at-first", action="store_true", help="stop at the first draw that finds something")
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="random-kills-") as tmp:
        failures, stats = killing.run(Path(tmp), args.seed, args.draws, stop_at_first=args.stop_at_first)
    for failure in failures:
        print(failure)
    failed_draws = len({f.split(" of seed")[0] for f in failures})
    print(
        f"seed {args.seed}: {stats['draws']} draws run, {failed_draws} failed ({len(failures)} problems), "
        f"{stats['wrote']} writers had replaced a target, {stats['mid_write']} kills fell inside a write "
        f"(the dead writer left a temporary), "
        f"one round of writes {stats['round_s'] * 1000:.0f} ms, {time.perf_counter() - start:.1f} s in all"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
