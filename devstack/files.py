"""Writing devstack's private files (keys, secrets) readable by their owner only."""

from __future__ import annotations

from pathlib import Path


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` with mode 0600, set before any byte is written."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
