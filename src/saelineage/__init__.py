"""saelineage: trace how SAE features connect across the layers of a language model.

`saelineage.Run(path)` explores a finished run from Python (saelineage.notebook.run); it is loaded
on first access, so `import saelineage` (and the command line) stays cheap.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("saelineage")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"

from saelineage.errors import SaelineageError  # noqa: E402

__all__ = ["Run", "SaelineageError", "__version__"]


def __getattr__(name: str):  # noqa: ANN202 - module __getattr__ (PEP 562)
    """`saelineage.Run`, imported on first access (PEP 562), not at `import saelineage`."""
    if name == "Run":
        from saelineage.notebook.run import Run

        return Run
    raise AttributeError(f"module 'saelineage' has no attribute {name!r}")
