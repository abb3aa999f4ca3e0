"""The contracts package installs on its own: its wheel (built offline, as
pip builds it) requires only pydantic, plus phonenumbers and email-validator
for the ``normalise`` extra, and its modules import in an interpreter whose
path holds nothing but the unpacked wheel and pydantic's folder: nothing of
the CRM's runtime or services comes along."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pydantic
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]

#: Our other top-level packages: none may be importable next to the wheel.
OURS = {"crm_runtime", "services", "crm_app", "crm", "bench", "scripts", "tests", "examples"}
#: The modules the brief of the package promises with pydantic alone.
MODULES = ["crm_contracts.customers", "crm_contracts.interactions", "crm_contracts.loyalty",
           "crm_contracts.topics", "crm_contracts.vocabulary"]

CHILD = """
import importlib.util, json, sys
import crm_contracts.customers, crm_contracts.interactions, crm_contracts.loyalty
import crm_contracts.topics, crm_contracts.vocabulary
print(json.dumps({
    "path": sys.path,
    "file": crm_contracts.__file__,
    "modules": sorted(sys.modules),
    "findable": sorted(n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None),
    "types": sorted(crm_contracts.registered_types()),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of ./contracts, built with the installed hatchling and no
    network (no index, no build isolation)."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "--quiet", "--wheel-dir",
                    str(dist), str(ROOT / "contracts")],
                   check=True, capture_output=True, text=True, timeout=120)
    (built,) = dist.glob("crm_contracts-*.whl")
    return built


def test_the_wheel_holds_the_contracts_and_requires_only_pydantic(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "crm_contracts"}
    assert "crm_contracts/py.typed" in names
    assert metadata["Name"] == "crm-contracts"
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    base = {r.name for r in requirements if r.marker is None}
    normalise = {r.name for r in requirements
                 if r.marker is not None and r.marker.evaluate({"extra": "normalise"})}
    assert base == {"pydantic"}
    assert normalise == {"phonenumbers", "email-validator"}
    assert len(requirements) == len(base) + len(normalise), requirements
    assert metadata.get_all("Provides-Extra") == ["normalise"]


def test_the_unpacked_wheel_imports_with_pydantic_alone(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    pydantic_home = Path(pydantic.__file__).resolve().parent.parent
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # -S: no site module, so neither site-packages nor the editable install's
    # .pth files of this checkout are on the path; only PYTHONPATH is.
    result = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, *sorted(OURS)], cwd=cwd, capture_output=True,
        text=True, timeout=60,
        env={"PYTHONPATH": os.pathsep.join([str(site), str(pydantic_home)])})
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout)

    assert {str(site), str(pydantic_home)} <= set(child["path"])
    others = set(child["path"]) - {"", str(site), str(pydantic_home)}  # "": the empty cwd
    assert all(Path(p).is_relative_to(sys.base_prefix) and "site-packages" not in p
               for p in others), others  # the standard library only
    assert Path(child["file"]).is_relative_to(site)
    assert child["findable"] == [], "a package of ours is on the child's path"
    loaded = {m.split(".")[0] for m in child["modules"]}
    assert loaded & OURS == set()
    assert {m for m in child["modules"] if m.startswith("crm")} >= set(MODULES)
    assert {"phonenumbers", "email_validator"} & loaded == set()  # the extra is not needed
    assert {"loyalty.discount_issued", "customer.registered",
            "interaction.recorded"} <= set(child["types"])
