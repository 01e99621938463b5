"""`bash run.sh lab` opens the notebooks on .venv's python3 kernel, in the environment nbval gives them."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_python3_kernelspec_runs_this_interpreter():
    from jupyter_client.manager import KernelManager

    # The notebooks' kernelspec is "python3"; the command Jupyter would start for it must be this python.
    assert all(json.loads(p.read_text())["metadata"]["kernelspec"]["name"] == "python3"
               for p in (ROOT / "notebooks").glob("*.ipynb"))
    km = KernelManager(kernel_name="python3")
    cmd = km.format_kernel_cmd()
    prefix = subprocess.run([cmd[0], "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), f"python3 kernel runs {cmd[0]}"
    assert cmd[1:3] == ["-m", "ipykernel_launcher"]


def setup_is_current() -> bool:
    # run.sh reinstalls when this stamp changed; the test below must not set up .venv as a side effect.
    files = ("pyproject.toml", "constraints-cpu.txt", "run.sh")
    stamp = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in files))
    have = ROOT / ".venv" / ".premem-stamp"
    return have.is_file() and have.read_text().strip() == stamp.hexdigest()[:16]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_sh_lab_starts_a_kernel_in_the_project_environment(tmp_path):
    if not setup_is_current():
        pytest.skip(".venv is not set up for this checkout's dependencies (bash run.sh test sets it up)")
    from jupyter_client import BlockingKernelClient

    port, token = free_port(), "premem-test"
    env = {k: v for k, v in os.environ.items() if k not in ("PREMEM_ROOT", "HF_HUB_OFFLINE")}  # run.sh's own
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        ["bash", str(ROOT / "run.sh"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", "--allow-root"],  # run.sh passes extra arguments through
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    headers = {"Authorization": f"token {token}"}
    try:
        for _ in range(120):
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                urllib.request.urlopen(urllib.request.Request(f"{url}/status", headers=headers), timeout=2)
                break
            except OSError:
                time.sleep(0.25)
        # As opening a notebook does: a session on its path starts a python3 kernel in its folder.
        session = {"path": "test_lab.ipynb", "type": "notebook", "kernel": {"name": "python3"}}  # makes no file
        post = urllib.request.Request(f"{url}/sessions", data=json.dumps(session).encode(), headers=headers,
                                      method="POST")
        kernel = json.load(urllib.request.urlopen(post, timeout=30))["kernel"]
        client = BlockingKernelClient(connection_file=str(tmp_path / f"kernel-{kernel['id']}.json"))
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=30)
        out = []
        code = ("import json, os, sys; print(json.dumps({'prefix': sys.prefix, 'cwd': os.getcwd(), "
                "'root': os.environ.get('PREMEM_ROOT'), 'offline': os.environ.get('HF_HUB_OFFLINE')}))")
        reply = client.execute_interactive(
            code, timeout=30, output_hook=lambda m: out.append(m["content"].get("text", "")))
        client.stop_channels()
        assert reply["content"]["status"] == "ok"
        seen = json.loads("".join(out))
        assert Path(seen["prefix"]).resolve() == (ROOT / ".venv").resolve()
        assert Path(seen["cwd"]).resolve() == (ROOT / "notebooks").resolve()
        assert Path(seen["root"]).resolve() == ROOT  # paths in notebooks resolve against the project root
        assert seen["offline"] == "1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        server.wait(timeout=20)
        log.close()


def test_progress_bars_are_widgets_in_the_lab():
    """tqdm.auto draws widgets in JupyterLab only where ipywidgets is installed; without it every bar
    warns "IProgress not found" and falls back to text."""
    from tqdm.notebook import IProgress

    assert IProgress is not None
