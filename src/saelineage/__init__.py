"""saelineage: trace how SAE features connect across the layers of a language model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("saelineage")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"

from saelineage.errors import SaelineageError  # noqa: E402

__all__ = ["SaelineageError", "__version__"]
