"""Rewrite each dvc.yaml stage's code deps (`src/finalbn/...`, `deploy/field/finalbn_field/...`) to its
command's import closure.

    python tools/sync_dvc_deps.py        # then `git diff dvc.yaml`

tests/test_structure.py checks the same rule and names what is missing; this writes it. Only the
runs of `- src/...` and `- deploy/field/...` lines change: comments, order of stages and other deps stay as written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "deploy" / "field")]

from finalbn import cli  # noqa: E402  (after the path)
from finalbn.infra import imports  # noqa: E402


def main() -> int:
    path = REPO / "dvc.yaml"
    lines = path.read_text().splitlines(keepends=True)
    out, stage, command, i = [], None, None, 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^  (\w[\w-]*):\s*$", line):
            stage, command = m.group(1), None
        if m := re.match(r"^\s+cmd: finalbn (\w+)", line):
            command = m.group(1)
        if m := re.match(r"^(\s+)- (src|deploy/field)/", line):
            indent = m.group(1)
            while i < len(lines) and re.match(r"^\s+- (src|deploy/field)/", lines[i]):
                i += 1
            if command is None:
                raise SystemExit(f"dvc.yaml stage {stage}: code deps before its cmd")
            want = sorted(str(p.relative_to(REPO)) for p in imports.closure(cli.COMMANDS[command]))
            out += [f"{indent}- {p}\n" for p in want]
            continue
        out.append(line)
        i += 1
    path.write_text("".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
