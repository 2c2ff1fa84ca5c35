"""Kept so scripts written against improviser 0.1 (``from improviser.encoding import ...``) still run;
the module is ``improviser.music.encoding``."""

from .music.encoding import *  # noqa: F403
