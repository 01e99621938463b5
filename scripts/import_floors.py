"""Each premem module's floor: 0 imports no other premem module, otherwise one above the highest
module it imports (imports inside functions included; the tasks package counts as one module).
`python scripts/import_floors.py` prints the floors bottom-up (docs/architecture.md shows them); it
assumes no import circle (`python ../shared/tools/import_circles.py lib/premem` finds those)."""
import ast
import functools
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "lib" / "premem"


def imports() -> dict[str, set[str]]:
    files = {p.stem: [p] for p in PKG.glob("*.py") if p.stem != "__init__"}
    files |= {d.name: sorted(d.glob("*.py")) for d in PKG.iterdir() if (d / "__init__.py").is_file()}
    deps = {}
    for name, paths in files.items():
        found = set()
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "premem":
                    found |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("premem."):
                    found.add(node.module.split(".")[1])
                elif isinstance(node, ast.Import):
                    found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("premem.")}
        deps[name] = (found & set(files)) - {name}
    return deps


def main() -> None:
    deps = imports()

    @functools.lru_cache(None)
    def floor(name: str) -> int:
        return 1 + max((floor(d) for d in deps[name]), default=-1)

    floors: dict[int, list[str]] = {}
    for name in deps:
        floors.setdefault(floor(name), []).append(name)
    for level in sorted(floors):
        print(f"{level:2d}  {', '.join(sorted(floors[level]))}")


if __name__ == "__main__":
    main()
