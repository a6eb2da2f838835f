"""The documentation's cross-references: relative links in the README and ``docs/`` point at files and headings that
exist, and the sections of ``docs/transfer.md`` that source comments cite by name are there."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # no headings in code blocks
    return [m.group(1) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)]


def test_anchor_follows_github():
    assert anchor("Voices, not channels: augmentation, sampling and the transfer check") == (
        "voices-not-channels-augmentation-sampling-and-the-transfer-check")
    assert anchor("Three shorter networks instead of two") == "three-shorter-networks-instead-of-two"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path):
    bad = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(REPO)}")
        elif fragment and dest.suffix == ".md" and fragment not in {anchor(h) for h in headings(dest)}:
            bad.append(f"{target}: no heading #{fragment} in {dest.relative_to(REPO)}")
    assert not bad, bad


def test_cited_transfer_sections_exist():
    sections = headings(REPO / "docs" / "transfer.md")
    cited = []
    for source in [*(REPO / "src").rglob("*.py"), *(REPO / "src").rglob("*.yaml")]:
        text = re.sub(r"\n\s*#\s*", " ", source.read_text(encoding="utf-8"))  # comments wrapped over lines
        cited += [(source.name, name) for name in re.findall(r'docs/transfer\.md "([^"]+)"', text)]
    assert len(cited) >= 4, cited  # demo.yaml and recipes.py cite it
    assert [c for c in cited if c[1] not in sections] == []
