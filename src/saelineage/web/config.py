"""`ServeConfig`: how `saelineage serve` serves the browser (the command's options are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Options of the feature browser's server."""

    host: str = "127.0.0.1"
    """Address to bind. The default (loopback) keeps the browser on this machine; any other address needs
    --auth-token (or --insecure)."""
    port: int = 8000
    """Port."""
    log_level: str = "warning"
    """uvicorn's log level (debug, info, warning, error)."""
    prompt_queue: int = 8
    """Live prompts that may wait while one runs (0 to 32); more at once are answered 503 with a
    Retry-After header instead of queueing without bound."""
    auth_token: str = ""
    """Access token every request must carry: header 'Authorization: Bearer TOKEN', or a browser cookie
    set by opening any page once with ?token=TOKEN. Read from $SAELINEAGE_AUTH_TOKEN when not given
    (keeps it out of shell history and process lists). At least 16 printable characters, no spaces."""
    insecure: bool = False
    """Serve to other machines without a token: anyone who reaches the port can use the browser and
    its live prompts."""


@dataclass
class SiteConfig:
    """Options of `saelineage export-site`: what the static copy of the browser holds."""

    features: str = ""
    """Feature pages for these features only: LAYER:FEATURE ids separated by commas or spaces, or a file of
    them (default: every live feature)."""
    top_n: int = 0
    """Feature pages for the N most active live features of each layer only (0: all live features)."""
    examples: int = 10
    """Top activating examples per feature page."""
    neighbours: int = 10
    """Strongest upstream and downstream edges (by jaccard) per feature page."""
    context_before: int = 10
    """Tokens shown before the token an example fires on."""
    context_after: int = 3
    """Tokens shown after it."""
    max_table_rows: int = 2000
    """Rows of the gates, splits and communities tables exported, rounded up to whole pages of 100 (the
    first ones in the browser's order; the notebook API and the Parquet files hold all)."""
