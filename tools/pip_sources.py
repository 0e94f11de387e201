"""The package sources pip is configured with, as uv's flags: `make install` installs with uv.

    $(shell python tools/pip_sources.py)   # --find-links /opt/wheels --extra-index-url ... --constraint ...

uv installs the same packages as pip from the same sources, several times faster (in parallel, and
from its cache of unpacked wheels), but it does not read pip's configuration (pip.conf, PIP_*
variables): this prints what `pip config list` holds as uv's options, and pip's own resolution
strategy (any index may give a package its best version). Nothing configured: nothing printed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}


def main() -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    flags, seen = ["--index-strategy", "unsafe-best-match"], set()
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name not in OPTIONS:
            continue
        for item in value.strip().strip("'\"").split():  # pip separates several values by spaces
            if (name, item) not in seen:
                seen.add((name, item))
                flags += [OPTIONS[name], item]
    print(shlex.join(flags))


if __name__ == "__main__":
    main()
