"""Seeded random streams: each kind of draw of a cell has its own, derived from the cell seed.

    g = torch.Generator().manual_seed(stream_seed(seed, ORDER, epoch))

Data order, augmentation, MixUp and head dropout each draw from their own stream, seeded by
(cell seed, stream, epoch). So the same numbers are drawn whatever else ran before — whether the
body runs inside the cell (unshared path) or once for many cells (shared features), in whatever
order the work is done.
"""

from __future__ import annotations

import numpy as np

ORDER, AUGMENT, MIXUP, DROPOUT, HEAD_INIT = 1, 2, 3, 4, 5
POSTHOC, SAMPLER = 6, 7  # post-hoc re-training (cRT, LWS); class-balanced sampling of the training split


def stream_seed(seed: int, stream: int, epoch: int = 0) -> int:
    """A 63-bit seed for one stream of one epoch of a cell seeded `seed`."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(stream), int(epoch)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
