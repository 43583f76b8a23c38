"""The layer rules, read from the imports in the source (function-level imports included).

Data flows one way: ml knows nothing of the service; core serves api, worker and cli and imports none
of them; routes call services, never repositories; the API never imports worker code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, with `from a import b` counted as both `a` and `a.b`."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def sources(relative: str) -> list[Path]:
    target = ROOT / relative
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


def violations(relative: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources(relative)
        for module in sorted(imported_modules(path))
        if any(module == prefix or module.startswith(prefix + ".") for prefix in forbidden)
    ]


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("ml", ("core", "api", "worker", "cli")),
        # The store imports nothing of ours (it used to import ml.errors while ml imported it).
        ("models_store", ("ml", "core", "api", "worker", "cli")),
        ("core", ("api", "worker", "cli")),
        ("api/routes", ("core.db.repositories",)),
        ("api", ("worker",)),
        ("core/settings.py", ("ml",)),
        ("core/queue.py", ("core.services",)),
    ],
)
def test_layer_imports(layer: str, forbidden: tuple[str, ...]) -> None:
    assert sources(layer), f"{layer} has no Python files"
    assert violations(layer, forbidden) == []


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def load():\n    from core.db import repositories\n    import worker.tasks\n")
    assert {"core.db.repositories", "worker.tasks"} <= imported_modules(module)
