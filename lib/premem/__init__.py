from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _v

try:
    __version__ = _v("premem")
except PackageNotFoundError:  # run from a source tree on PYTHONPATH, not installed
    __version__ = "0+source"


def __getattr__(name):
    # `from premem import PreMemCallback` without importing transformers for every `import premem`.
    if name == "PreMemCallback":
        from premem.callback import PreMemCallback

        return PreMemCallback
    raise AttributeError(f"module 'premem' has no attribute {name!r}")
