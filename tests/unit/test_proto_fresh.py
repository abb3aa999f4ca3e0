"""The committed generated code in crm/ matches what proto/ generates now."""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from gen_proto import generate  # noqa: E402


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = tmp_path / "crm"
    committed = ROOT / "crm"
    assert _files(fresh) == _files(committed), "run `make proto` and commit crm/"
    stale = [f for f in sorted(_files(fresh))
             if not filecmp.cmp(fresh / f, committed / f, shallow=False)]
    assert not stale, f"stale generated files (run `make proto`): {stale}"
