"""Peak memory of decoding a large phone photo for a small model: with JPEG draft vs without, in one run.

    .venv/bin/python benchmarks/large_photo_memory.py               # a ~50 MP JPEG, a 64 px model
    .venv/bin/python benchmarks/large_photo_memory.py --size 224 --megapixels 108

Makes the JPEG in a temporary folder, then decodes it in a fresh subprocess per variant with
`finalbn_field.images.load_rgb` (training's and the field's one decoder) and resizes it to the model's
input as training does: `size=` given (the JPEG decodes at 1/2, 1/4 or 1/8 scale, its shorter side
still >= size) against `size=None` (the whole image). Each child reports its peak resident set
size (VmHWM of /proc/self/status on Linux, else resource.getrusage's ru_maxrss) and the RSS after
its imports; prints both, the decode's own share (peak minus imports) and the ratio, measured in
this run. The photo is made in a subprocess of its own too: Linux carries a parent's peak RSS over
fork and exec into ru_maxrss. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
from finalbn_field.images import decode
from PIL import Image
def status_kib(key):  # VmRSS: resident now; VmHWM: the peak, of this process's own memory (Linux)
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux units; macOS counts bytes
path, size = sys.argv[1], int(sys.argv[2])
before = status_kib("VmRSS")
img, info = decode(path, max_pixels=10**9, size=size or None)
w, h = img.size
img = img.resize((max(64, round(w * 64 / min(w, h))), max(64, round(h * 64 / min(w, h)))), Image.BILINEAR)
peak = status_kib("VmHWM")
print(json.dumps({"imports_kib": before, "peak_kib": peak, "decoded": list(info.size), "scale": info.scale}))
"""


def measure(path: Path, size: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(size)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megapixels", type=float, default=50.0, help="the photo's size (default 50)")
    parser.add_argument("--size", type=int, default=64, help="the model's input side in px (default 64)")
    args = parser.parse_args()
    height = int(math.sqrt(args.megapixels * 1e6 * 3 / 4))
    width = int(height * 4 / 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from PIL import Image; Image.new('RGB', "
                f"({width}, {height}), (40, 120, 30)).save(sys.argv[1], quality=90)",
                str(path),
            ],
            check=True,
        )
        print(
            f"photo: {width}x{height} = {width * height / 1e6:.1f} MP JPEG ({path.stat().st_size / 1e6:.1f} MB), "
            f"model input {args.size} px"
        )
        drafted, whole = measure(path, args.size), measure(path, 0)
    for name, r in (("with draft", drafted), ("without draft", whole)):
        own = r["peak_kib"] - r["imports_kib"]
        print(
            f"{name:>14}: decoded {r['decoded'][0]}x{r['decoded'][1]} (1/{r['scale']}), peak RSS "
            f"{r['peak_kib'] / 1024:.0f} MiB, of which the decode {own / 1024:.0f} MiB"
        )
    own_d = max(drafted["peak_kib"] - drafted["imports_kib"], 1)
    own_w = whole["peak_kib"] - whole["imports_kib"]
    print(
        f"ratio (without / with draft): peak RSS {whole['peak_kib'] / drafted['peak_kib']:.1f}x, "
        f"the decode's own memory {own_w / own_d:.0f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
