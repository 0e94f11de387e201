"""An HTML template for `dvc plots show` that works offline: Vega, Vega-Lite and Vega-Embed inlined.

    python tools/offline_plots.py .dvc/plots.html    # `make dvc-ready` (and so `make run`) runs it

DVC's own page loads those three scripts from a CDN (dvc_render's `VegaRenderer.SCRIPTS`), so
`dvc plots show` writes a page that is blank without network. DVC takes another page as
`plots.html_template` (`dvc config plots.html_template ...`); this one holds the scripts themselves,
from the npm registry's packages (`npm pack`, the versions pinned below: Vega-Lite 5, as DVC's
templates' `$schema` asks), and no `{scripts}` placeholder, so DVC adds no CDN tag. The file is made
once and kept (about 0.8 MB, git-ignored); where npm or the registry is out of reach it says so in
one line and exits 0: `dvc plots show` then uses DVC's page, and the same plots are PNGs in report/.
Exit 1 only when the target cannot be written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # each one's build/<name>.min.js
MARK = "<!-- finalbn offline plots: " + ", ".join(f"{k}@{v}" for k, v in PACKAGES.items()) + " -->"

PAGE = """<!DOCTYPE html>
<html>
<head>
    @MARK@
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
@INLINE@
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")  # what dvc_render's HTML.embed fills


def page(scripts: dict[str, str]) -> str:
    """The template: each script inlined (`</script` escaped so that it does not end the tag), then
    DVC's `{refresh_tag}` and `{plot_divs}`. Raises ValueError when a script is empty or holds one
    of DVC's placeholders (DVC would fill it inside the script)."""
    blocks = []
    for name, js in scripts.items():
        if not js.strip():
            raise ValueError(f"the script of {name} is empty")
        held = [p for p in PLACEHOLDERS if p in js]
        if held:
            raise ValueError(f"the script of {name} holds DVC's placeholder {held[0]}")
        js = js.replace("</script", "<\\/script")
        blocks.append(f'    <script type="text/javascript">/* {name} */\n{js}\n    </script>')
    return PAGE.replace("@MARK@", MARK).replace("@INLINE@", "\n".join(blocks))


def fetch(tmp: Path) -> dict[str, str]:
    """Each package's minified build, from `npm pack` into `tmp`. Raises OSError or
    subprocess.SubprocessError when npm or the registry is out of reach."""
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("npm is not installed")
    specs = [f"{k}@{v}" for k, v in PACKAGES.items()]
    subprocess.run([npm, "pack", "--silent", *specs], cwd=tmp, check=True, capture_output=True, timeout=180)
    out = {}
    for name, version in PACKAGES.items():
        with tarfile.open(tmp / f"{name}-{version}.tgz") as tar:
            member = tar.extractfile(f"package/build/{name}.min.js")
            if member is None:
                raise OSError(f"{name}@{version} has no build/{name}.min.js")
            out[name] = member.read().decode("utf-8")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: offline_plots.py TARGET.html", file=sys.stderr)
        return 2
    target = Path(argv[0])
    if target.is_file() and MARK in target.read_text(encoding="utf-8", errors="replace"):
        return 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            text = page(fetch(Path(tmp)))
    except (OSError, subprocess.SubprocessError, tarfile.TarError, KeyError, ValueError) as exc:
        print(f"offline plots: {type(exc).__name__}: {exc}; `dvc plots show` loads Vega from its CDN (needs network)")
        return 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_target = target.with_suffix(".tmp")
        tmp_target.write_text(text, encoding="utf-8")
        tmp_target.replace(target)
    except OSError as exc:
        print(f"offline plots: cannot write {target}: {exc}", file=sys.stderr)
        return 1
    print(f"offline plots: {target} ({target.stat().st_size // 1024} KiB): `dvc plots show` needs no network")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
