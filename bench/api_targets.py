"""The servers ``bench/api_load.py`` compares, each run by it as a process of its own.

::

    python bench/api_targets.py ceiling   --port P --body-file FILE
    python bench/api_targets.py api       --port P      (settings from CACHE_REFRESHER_*)
    python bench/api_targets.py datasette --port P --database FILE

Every target is served by :func:`serve`: one uvicorn server, one worker, on
127.0.0.1, with the same event loop and HTTP implementation (``--loop``,
``--http``), no access log. What differs is only the ASGI app:

- ``ceiling``: FastAPI with one ``async`` route of the same path shape as the
  item route, answering a constant JSON body (one real item's payload, so of the
  same size) without auth or storage: the framework's ceiling;
- ``api``: our app, ``api.app.create_app(settings)``, its resources opened by its
  own lifespan from the settings, as ``cache-refresher api`` does (the
  benchmark points them at the SQLite file and at its devstack issuer);
- ``datasette``: Datasette's ASGI app serving the same SQLite file (mutable, as
  it is: the refresh writes to it), facet suggestions off.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Response

HOST = "127.0.0.1"


def ceiling_app(body: bytes) -> FastAPI:
    """FastAPI with one constant-JSON route shaped like the item route, no auth."""
    app = FastAPI(title="ceiling", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/v1/namespaces/{namespace}/items/{key}")
    async def item(namespace: str, key: str) -> Response:
        return Response(body, media_type="application/json")

    return app


def api_app() -> FastAPI:
    """Our API, built from the ``CACHE_REFRESHER_*`` settings the benchmark passes."""
    from api.app import create_app
    from refresher.settings import load_settings

    return create_app(load_settings())


def datasette_app(database: Path) -> Any:
    """Datasette's ASGI app over ``database`` (mutable: it may change under it)."""
    from datasette.app import Datasette

    return Datasette([str(database)], settings={"suggest_facets": False}).app()


def serve(app: Any, *, port: int, loop: str, http: str) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until SIGTERM/SIGINT: the one uvicorn setup
    all targets share."""
    uvicorn.run(
        app,
        host=HOST,
        port=port,
        loop=loop,
        http=http,
        workers=None,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/api_targets.py", description=__doc__)
    parser.add_argument("target", choices=("ceiling", "api", "datasette"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", default="asyncio", help="uvicorn's --loop")
    parser.add_argument("--http", default="h11", help="uvicorn's --http")
    parser.add_argument("--body-file", type=Path, help="ceiling: the body to answer")
    parser.add_argument("--database", type=Path, help="datasette: the SQLite file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.target == "ceiling":
        if args.body_file is None:
            raise SystemExit("ceiling needs --body-file")
        app: Any = ceiling_app(args.body_file.read_bytes())
    elif args.target == "datasette":
        if args.database is None:
            raise SystemExit("datasette needs --database")
        app = datasette_app(args.database)
    else:
        app = api_app()
    serve(app, port=args.port, loop=args.loop, http=args.http)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
