"""Generate Python code and mypy stubs from proto/ into crm/ (committed).

Run with ``make proto``. ``tests/unit/test_proto_fresh.py`` regenerates into a
temporary folder and fails if the committed code differs, so the checked-in
code always matches the contracts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}",
            f"--grpc_python_out={out}", f"--mypy_out={out}", f"--mypy_grpc_out={out}", *files]
    # protoc looks its plugins up on PATH; the venv's bin holds protoc-gen-mypy.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Make every generated folder a regular package.
    for folder in {p.parent for p in out.rglob("*_pb2.py")}:
        while folder != out:
            (folder / "__init__.py").touch()
            folder = folder.parent


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
