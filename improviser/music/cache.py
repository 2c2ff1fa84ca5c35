"""Where derived data (parsed corpora, held-out melodies) is cached: $IMPROVISER_CACHE or ~/.cache/improviser."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    d = Path(os.environ.get("IMPROVISER_CACHE", Path.home() / ".cache" / "improviser"))
    d.mkdir(parents=True, exist_ok=True)
    return d
