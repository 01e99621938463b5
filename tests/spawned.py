"""What tests run in spawned processes. A spawned process imports the module of the function it is
given, and a test module imports much of premem (test_stages.py and test_launcher.py take 8 s to
import, premem.launcher alone 2): the functions live here, beside nothing heavier than the launcher."""
import os
import time
from pathlib import Path

from premem import launcher


def node(log: str, key: str, seconds: float) -> str:
    """A graph node: sleep, log its key and process, fail if it is "bad"."""
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"{key} {os.getpid()}\n")
    if key == "bad":
        raise ValueError("node bad failed")
    return key.upper()


def tell_and_sleep(path):
    """Write this process's pid to `path` (whole or not at all), then sleep past any test."""
    Path(path + ".tmp").write_text(str(os.getpid()))
    Path(path + ".tmp").rename(path)
    time.sleep(300)


def assert_alone():
    """No variable of a parent's rank (torchrun, accelerate) reached this process."""
    assert not [k for k in os.environ if k in launcher.RENDEZVOUS or k.startswith(launcher.RENDEZVOUS_PREFIXES)]
