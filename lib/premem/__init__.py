from importlib.metadata import PackageNotFoundError, version as _v

try:
    __version__ = _v("premem")
except PackageNotFoundError:  # run from a source tree on PYTHONPATH, not installed
    __version__ = "0+source"
