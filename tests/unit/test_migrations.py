"""Unit tests for crm_runtime.migrations: reading migration files (no database)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crm_runtime.migrations import RUNTIME_MIGRATIONS, Migration, load_dir, migrations_for


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


def test_files_load_in_version_order(tmp_path: Path) -> None:
    folder = write(tmp_path, {
        "003_add_index.sql": "CREATE INDEX i ON t (a);",
        "001_create_table.sql": "CREATE TABLE t (a int);",
        "002_add_column.sql": "ALTER TABLE t ADD b int;",
    })
    plan = load_dir("service", folder)
    assert plan == [
        Migration("service", 1, "create_table", "CREATE TABLE t (a int);"),
        Migration("service", 2, "add_column", "ALTER TABLE t ADD b int;"),
        Migration("service", 3, "add_index", "CREATE INDEX i ON t (a);"),
    ]


def test_description_may_contain_underscores(tmp_path: Path) -> None:
    folder = write(tmp_path, {"001_add_loyalty_tier_table.sql": "SELECT 1;"})
    [m] = load_dir("service", folder)
    assert (m.version, m.name) == (1, "add_loyalty_tier_table")


def test_other_files_are_ignored(tmp_path: Path) -> None:
    folder = write(tmp_path, {"001_init.sql": "SELECT 1;", "README.md": "notes",
                              "002_draft.sql.bak": "SELECT 2;"})
    (folder / "sub").mkdir()
    (folder / "sub" / "002_nested.sql").write_text("SELECT 3;")
    assert [m.version for m in load_dir("service", folder)] == [1]


def test_empty_folder_has_no_migrations(tmp_path: Path) -> None:
    assert load_dir("service", tmp_path) == []


@pytest.mark.parametrize("bad", ["init.sql", "abc_init.sql", "001.sql", "001_.sql",
                                 "v001_init.sql", "-01_init.sql"])
def test_badly_named_file_is_rejected(tmp_path: Path, bad: str) -> None:
    folder = write(tmp_path, {"001_ok.sql": "SELECT 1;", bad: "SELECT 2;"})
    with pytest.raises(ValueError, match=r"must be named NNN_description\.sql") as info:
        load_dir("service", folder)
    assert bad in str(info.value)


@pytest.mark.parametrize("second", ["001_other.sql", "1_other.sql", "0001_other.sql"])
def test_duplicate_versions_are_rejected(tmp_path: Path, second: str) -> None:
    folder = write(tmp_path, {"001_init.sql": "SELECT 1;", second: "SELECT 2;"})
    with pytest.raises(ValueError, match="duplicate migration versions"):
        load_dir("service", folder)


def test_versions_are_ordered_numerically(tmp_path: Path) -> None:
    # By name "10_x" sorts before "9_x"; by version it comes after.
    folder = write(tmp_path, {f"{n}_step.sql": f"SELECT {n};" for n in range(1, 12)})
    assert [m.version for m in load_dir("service", folder)] == list(range(1, 12))


def test_gap_in_versions_is_rejected(tmp_path: Path) -> None:
    folder = write(tmp_path, {"001_init.sql": "SELECT 1;", "003_skip.sql": "SELECT 3;"})
    with pytest.raises(ValueError, match="gap"):
        load_dir("service", folder)


def test_checksum_is_sha256_of_the_sql() -> None:
    m = Migration("service", 1, "init", "CREATE TABLE t (a int);")
    assert m.checksum == hashlib.sha256(b"CREATE TABLE t (a int);").hexdigest()
    assert m.checksum != Migration("service", 1, "init", "CREATE TABLE t (b int);").checksum


def test_runtime_migrations_load_and_are_contiguous() -> None:
    plan = load_dir("runtime", RUNTIME_MIGRATIONS)
    assert plan, "the runtime ships its own migrations"
    assert [m.version for m in plan] == list(range(1, len(plan) + 1))
    assert all(m.source == "runtime" and m.sql.strip() for m in plan)


def test_migrations_for_puts_runtime_first(tmp_path: Path) -> None:
    runtime = load_dir("runtime", RUNTIME_MIGRATIONS)
    service_dir = write(tmp_path / "migrations", {"001_customers.sql": "SELECT 1;"})

    plan = migrations_for(service_dir)

    assert plan[: len(runtime)] == runtime
    assert plan[len(runtime):] == [Migration("service", 1, "customers", "SELECT 1;")]


def test_migrations_for_without_a_service_folder(tmp_path: Path) -> None:
    runtime = load_dir("runtime", RUNTIME_MIGRATIONS)
    assert migrations_for(None) == runtime
    assert migrations_for(tmp_path / "missing") == runtime
