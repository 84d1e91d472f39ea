"""Web feature browser: `create_app(run_dir)` (FastAPI) and `serve(run_dir, host, port)`.

Imports are lazy so that `saelineage --help` does not load FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from saelineage.web import app

        return getattr(app, name)
    raise AttributeError(name)
