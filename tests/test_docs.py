"""The documentation cannot drift from the repository it describes.

- docs/architecture.md names every package directory of ``plugins/dispatch`` (a new package
  without its sentence fails here);
- docs/rules.md defines every rule number the tests cite (R1–R14, B1–B9);
- every link of README.md and docs/ leads to a file (and heading) inside the repository, so a
  bare clone reads complete documentation; README's index lists every page of docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
LIBRARY = REPO / "plugins" / "dispatch"
PAGES = sorted([REPO / "README.md", *DOCS.glob("*.md")])

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_RULE_CITED = re.compile(r"\b([RB](?:1[0-4]|[1-9]))\b")


def package_dirs() -> list[str]:
    """Every directory of the library holding Python code, as ``stages/`` or ``channels/formats/``."""
    found = {
        path.parent.relative_to(LIBRARY).as_posix()
        for path in LIBRARY.rglob("*.py")
        if "__pycache__" not in path.parts and path.parent != LIBRARY
    }
    return sorted(f"{name}/" for name in found)


def test_architecture_names_every_package_of_the_library() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    packages = package_dirs()
    assert "stages/" in packages and "channels/formats/" in packages  # the walk found the tree
    missing = [name for name in packages if f"`{name}`" not in text]
    assert missing == [], f"docs/architecture.md has no sentence for {missing}"


def test_every_rule_the_tests_cite_is_defined_in_rules_md() -> None:
    rules = (DOCS / "rules.md").read_text(encoding="utf-8")
    defined = set(re.findall(r"^\*\*([RB]\d+) — ", rules, re.MULTILINE))
    assert defined == {f"R{n}" for n in range(1, 15)} | {f"B{n}" for n in range(1, 10)}
    cited: set[str] = set()
    for path in (REPO / "tests").rglob("*.py"):
        cited.update(_RULE_CITED.findall(path.read_text(encoding="utf-8")))
    names = {
        m.upper() for m in re.findall(r"def test_([rb]\d+)_", (REPO / "tests" / "test_rules.py").read_text())
    }
    assert names and cited
    assert (cited | names) - defined == set()


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(h) for h in _HEADING.findall(text)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_lead_to_files_and_headings_inside_the_repository(page: Path) -> None:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # https:, mailto: — not a file of ours
            continue
        path_part, _, anchor = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if not file.is_relative_to(REPO) or not file.exists():
            broken.append(f"{target} (no such file in the repository)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no such heading)")
    assert broken == []


def test_readme_indexes_every_page_of_docs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "shared/" not in readme
    linked = {Path(t.partition("#")[0]).name for t in _LINK.findall(readme) if t.startswith("docs/")}
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(linked)
