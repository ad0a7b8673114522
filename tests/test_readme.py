"""The README stays a short user's guide that matches the code: every method kind and preset is
listed, every linked page exists, and the CLI commands it shows are the CLI's."""
from __future__ import annotations

import re
from pathlib import Path

import slimkit.catalog  # noqa: F401  (registers every method)
from slimkit.cli.main import _parser
from slimkit.core import kinds, presets

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_every_kind_and_preset_is_listed():
    for kind in kinds():
        assert f"`{kind}`" in README, kind
    for name in presets():
        assert f"`{name}`" in README, name


def test_links_resolve():
    """Relative links in the README and the docs pages point at files that exist."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text())
        assert links or page.name != "README.md"
        for link in links:
            assert (page.parent / link).exists(), f"{page.name}: {link}"


def test_cli_commands_shown_exist():
    sub = next(a for a in _parser()._actions if a.dest == "command")
    shown = set(re.findall(r"^slimkit ([a-z-]+)", README, flags=re.M))
    assert shown and shown <= set(sub.choices), shown - set(sub.choices)
