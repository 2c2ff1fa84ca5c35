"""Playing live: the conductor and its timing sources, the listening part, the engine, sessions to files.

The top layer below the CLI: uses ``improviser.music``, ``improviser.model`` and ``improviser.ports``.
"""
