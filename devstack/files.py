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


def replace_private(path: Path, data: str) -> None:
    """Replace ``path`` whole with ``data`` (mode 0600): a reader sees the old
    content or the new, never half of it (kubelet swaps projected tokens so)."""
    staging = path.with_name(f".{path.name}.new")
    write_private(staging, data)
    staging.replace(path)
