import logging
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _v

# bitsandbytes, imported with transformers' Trainer and peft, logs on CPUs with AVX512-BF16 that the
# optional `kernels` package is absent, and runs its own CPU path instead: one line in every worker
# process that nobody can act on. That line alone is dropped, before any premem module imports them.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward"))

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
