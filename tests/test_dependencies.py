"""Every direct import of plugins/ and dags/ is declared: the runtime code's in requirements.txt
(what the Airflow image installs), the development tools' (plugins/dispatch/devtools) in
requirements.txt or requirements-dev.txt — and every declared package is pinned by
constraints.txt. A library that arrives only as another package's dependency can disappear
with that package's next release."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"dispatch", "tests"}
DEVTOOLS = ROOT / "plugins" / "dispatch" / "devtools"
#: meta-packages that pin the distributions sharing their import name exactly (apache-airflow
#: pins its apache-airflow-core and apache-airflow-task-sdk: ``import airflow`` is declared by it)
META = ("apache-airflow",)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(path: Path) -> set[str]:
    """Distribution names a requirements file lists (following ``-r``)."""
    names: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            names |= _declared(path.parent / line[2:].strip())
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        assert match, f"{path.name}: cannot read {raw!r}"
        names.add(_norm(match.group(0)))
    return names


def _with_meta(declared: set[str]) -> set[str]:
    out = set(declared)
    for meta in META:
        if _norm(meta) in declared:
            for req in md.requires(meta) or ():
                if "extra ==" not in req:
                    out.add(_norm(re.match(r"[A-Za-z0-9._-]+", req).group(0)))  # type: ignore[union-attr]
    return out


def _imports(path: Path) -> set[str]:
    """Absolute imports of a module, as dotted names (``from a.b import c`` gives ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _distributions(module: str, top_level: dict[str, list[str]]) -> set[str]:
    """The installed distributions providing ``module``: by its top-level name, narrowed by
    the files each ships when several share that name (``airflow.sdk`` vs ``airflow.models``)."""
    candidates = top_level.get(module.split(".")[0], [])
    if len(candidates) <= 1:
        return {_norm(d) for d in candidates}
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = "/".join(parts[:depth])
        owners = {
            _norm(dist)
            for dist in candidates
            for f in md.files(dist) or ()
            if str(f) in (f"{prefix}.py", f"{prefix}/__init__.py")
        }
        if owners:
            return owners
    return {_norm(d) for d in candidates}


def _third_party_imports() -> dict[str, set[Path]]:
    found: dict[str, set[Path]] = {}
    for folder in ("plugins", "dags"):
        for path in (ROOT / folder).rglob("*.py"):
            for module in _imports(path):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY:
                    continue
                found.setdefault(module, set()).add(path)
    return found


def test_every_direct_import_is_declared() -> None:
    top_level = md.packages_distributions()
    runtime = _with_meta(_declared(ROOT / "requirements.txt"))
    dev = _with_meta(_declared(ROOT / "requirements-dev.txt"))
    imports = _third_party_imports()
    assert "croniter" in imports and "sqlalchemy" in imports  # the walk sees the code
    missing = []
    for module, paths in sorted(imports.items()):
        dists = _distributions(module, top_level)
        assert dists, f"{module}: not installed (imported by {sorted(p.name for p in paths)})"
        for path in paths:
            allowed = dev if path.is_relative_to(DEVTOOLS) else runtime
            if not dists & allowed:
                missing.append(f"{path.relative_to(ROOT)}: {module} ({' or '.join(sorted(dists))})")
    assert missing == [], "undeclared imports:\n" + "\n".join(missing)


def test_every_declared_package_is_pinned_by_the_constraints() -> None:
    pinned = {
        _norm(line.split("==", 1)[0])
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for name in ("requirements.txt", "requirements-dev.txt", "requirements-celery.txt"):
        unpinned = _declared(ROOT / name) - pinned
        assert unpinned == set(), f"{name}: not pinned in constraints.txt: {sorted(unpinned)}"


@pytest.mark.parametrize("module", ["tabulate", "matplotlib"])
def test_development_only_packages_stay_out_of_the_runtime_requirements(module: str) -> None:
    """The Airflow image installs requirements.txt alone; the demo's and the benchmark's
    libraries are not part of it, and the runtime code does not import them."""
    assert _norm(module) not in _declared(ROOT / "requirements.txt")
    users = _third_party_imports().get(module, set())
    assert users and all(p.is_relative_to(DEVTOOLS) for p in users)
