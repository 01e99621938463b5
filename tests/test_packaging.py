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
