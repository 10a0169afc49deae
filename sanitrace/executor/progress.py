"""Progress bars on stderr: bytes, with rate and ETA."""

import sys


def progress_bar(total: int, desc: str, position: int = 0, enabled: bool = True):
    """A tqdm bar of ``total`` bytes (disabled: updates are no-ops)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        position=position,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
