"""The documentation parses, and documents every configuration key."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from txmailhub import config

docutils_core = pytest.importorskip("docutils.core")
ROOT = Path(__file__).resolve().parent.parent
RST = sorted([ROOT / "README.rst", *(ROOT / "docs").glob("*.rst")])


@pytest.mark.parametrize("path", RST, ids=lambda p: p.name)
def test_restructuredtext_is_valid(path: Path) -> None:
    warnings = io.StringIO()
    docutils_core.publish_doctree(
        path.read_text(), source_path=str(path),
        settings_overrides={"warning_stream": warnings, "report_level": 2},
    )
    assert warnings.getvalue() == ""


@pytest.mark.parametrize(
    ("section", "settings"),
    [("hub", config.HubSettings), ("users", config.UsersSettings),
     ("aliases", config.AliasesSettings), ("tls", config.TLSSettings),
     ("smtp", config.SMTPSettings), ("submission", config.SubmissionSettings),
     ("pop3", config.POP3Settings), ("relay", config.RelaySettings)],
)
def test_every_config_key_is_documented(section: str, settings: type) -> None:
    text = (ROOT / "docs" / "configuration.rst").read_text()
    body = text.split(f"\n``[{section}]``", 1)[1].split("\n``[", 1)[0]
    for f in dataclasses.fields(settings):
        assert f"``{f.name}``" in body, f"[{section}] {f.name} is not in docs/configuration.rst"
