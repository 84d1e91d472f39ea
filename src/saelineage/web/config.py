"""`ServeConfig`: how `saelineage serve` serves the browser (the command's options are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Options of the feature browser's server."""

    host: str = "127.0.0.1"
    """Address to bind. The default (loopback) keeps the browser on this machine; anything else exposes it
    without authentication."""
    port: int = 8000
    """Port."""
    log_level: str = "warning"
    """uvicorn's log level (debug, info, warning, error)."""
