"""The installed saelineage version, as manifests and the browser report it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("saelineage")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"
