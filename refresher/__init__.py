"""cache-refresher: the app side (settings, database, cache store, leases, sources, CLI).

``api`` builds on this package; this package never imports ``api``.
"""

from __future__ import annotations

__version__ = "0.1.0"
