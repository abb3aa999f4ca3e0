"""docs/operations.md: its internal links resolve, the files it points to
exist, and it documents the commands operators need."""

from __future__ import annotations

import re

from tests.deploy.catalog import markdown_anchors
from tests.deploy.conftest import ROOT

DOC = ROOT / "docs" / "operations.md"


def text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_internal_links_resolve() -> None:
    anchors = markdown_anchors(text())
    for anchor in re.findall(r"\]\(#([^)]+)\)", text()):
        assert anchor in anchors, f"#{anchor}: no such heading"
    for path, anchor in re.findall(r"\]\((\w[\w./-]*\.md)#([^)]+)\)", text()):
        target = DOC.parent / path
        assert anchor in markdown_anchors(target.read_text(encoding="utf-8")), \
            f"{path}#{anchor}: no such heading"


def test_paths_in_the_overview_exist() -> None:
    overview = text().split("## The image")[0]
    paths = re.findall(r"`((?:deploy|tests)/[\w./-]*|Dockerfile|\.dockerignore)`", overview)
    assert len(paths) >= 8
    for path in paths:
        assert (ROOT / path).exists(), path


def test_documents_the_operator_commands() -> None:
    doc = text()
    for needed in ("crm dlq replay <topic> [--limit N]", "crm migrate", "crm topics",
                   "token_sha256", "pg_dump", "CRM_RELAY_LANES", "CRM_TOPIC_PARTITIONS",
                   "kubectl apply -k", "docker compose up"):
        assert needed in doc, needed
