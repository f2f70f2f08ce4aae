"""The architecture's one-way rule, checked two ways: the source of every module is scanned for
imports (function-level ones included), and each package is imported in a fresh interpreter to
see which heavy libraries that import loads.

    server.errors, server.metrics         leaves: import nothing of the project
    server.manifest                       schema, fates, file formats: only itself and the leaves
    server.settings                       + manifest
    server.engine                         + manifest, settings
    server.experts                        + engine
    server.api                            + experts
    server.commands, server.cli           anything in server
    trainer                               server.manifest only (never the rest of server)
    bench                                 server, trainer; never tests
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]

LEAVES = {"server.errors", "server.metrics"}
# module prefix -> the project modules (prefixes) it may import
ALLOWED: dict[str, set[str]] = {
    "server.errors": set(),
    "server.metrics": set(),
    "server.manifest": {"server.manifest"} | LEAVES,
    "server.settings": {"server.manifest", "server.settings"} | LEAVES,
    "server.engine": {"server.manifest", "server.settings", "server.engine"} | LEAVES,
    "server.experts": {"server.manifest", "server.settings", "server.engine", "server.experts"} | LEAVES,
    "server.api": {"server.manifest", "server.settings", "server.engine", "server.experts", "server.api"} | LEAVES,
    "server.commands": {"server"},
    "server.cli": {"server"},
    "server": {"server"},
    "trainer": {"server.manifest", "trainer"},
    "bench": {"server", "trainer", "bench"},
}
PROJECT = ("server", "trainer", "bench", "tests", "conftest")

# package -> heavy libraries that importing it must not load
NOT_LOADED = {
    "server.manifest.schema": {"torch", "vllm", "fastapi", "transformers"},
    "server.manifest.fates": {"torch", "vllm", "fastapi", "transformers"},
    "server.manifest.prompt_formats": {"torch", "vllm", "fastapi", "transformers"},
    "server.manifest.package": {"torch", "vllm", "fastapi", "transformers"},
    "server.manifest.validate": {"torch", "vllm", "fastapi", "transformers"},
    "server.manifest.sampling": {"torch", "vllm", "fastapi", "transformers"},
    "server.manifest.soft_prompt": {"torch", "vllm", "fastapi"},
    "server.settings": {"torch", "vllm", "fastapi"},
    "server.engine.vllm_engine": {"vllm", "fastapi"},
    "server.experts.registry": {"vllm", "fastapi"},
    "server.api.app": {"vllm", "torch"},
    "server.cli": {"torch", "vllm", "fastapi"},
    "trainer.cli": {"vllm", "fastapi"},
    "trainer.plan": {"torch", "vllm", "fastapi"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, anywhere in it, as absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from server.manifest import schema` imports server.manifest.schema
            found += [
                (node.lineno, f"{target}.{alias.name}")
                for alias in node.names
                if (REPO / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").exists()
            ]
    return found


def rule_for(module: str) -> set[str]:
    best = max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)
    return ALLOWED[best]


def sources() -> list[Path]:
    return sorted(p for pkg in ("server", "trainer", "bench") for p in (REPO / pkg).rglob("*.py"))


def test_every_package_is_covered_by_a_rule():
    for path in sources():
        module = module_name(path)
        assert any(module == p or module.startswith(p + ".") for p in ALLOWED), module


def test_imports_point_one_way():
    violations = []
    for path in sources():
        module = module_name(path)
        allowed = rule_for(module)
        for line, target in imported_modules(path):
            if target.split(".")[0] not in PROJECT:
                continue
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                violations.append(f"{path.relative_to(REPO)}:{line}: {module} imports {target}")
    assert not violations, "imports against the one-way rule:\n" + "\n".join(violations)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    # the rule's own check: a function-level import is found like a top-level one
    probe = REPO / "trainer" / "_boundary_probe.py"
    probe.write_text("def f():\n    from server.api import app\n    from . import plan\n")
    try:
        assert (2, "server.api") in imported_modules(probe)
        assert (3, "trainer.plan") in imported_modules(probe)
    finally:
        probe.unlink()


@pytest.mark.parametrize("module", sorted(NOT_LOADED))
def test_importing_loads_no_heavy_library(module):
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not (loaded & NOT_LOADED[module]), f"{module} loads {sorted(loaded & NOT_LOADED[module])}"
