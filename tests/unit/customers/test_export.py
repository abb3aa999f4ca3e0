"""Every column the customers schema holds is in the data-subject export (or
its table is declared to hold nothing about a customer): a migration that adds
a column fails here until the export covers it."""

from __future__ import annotations

import re

from services.customers.app import SPEC
from services.customers.store import EXPORT_COLUMNS, NOT_CUSTOMER_DATA

_NOT_COLUMNS = {"PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "CONSTRAINT", "EXCLUDE"}


def schema_columns(sql: str) -> dict[str, set[str]]:
    """Tables and their columns from CREATE TABLE and ALTER TABLE ... ADD COLUMN."""
    sql = re.sub(r"--[^\n]*", "", sql)
    tables: dict[str, set[str]] = {}
    for name, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\s*\);", sql, re.S):
        cols = tables.setdefault(name, set())
        depth = 0
        item = ""
        for ch in body + ",":  # split on top-level commas only
            if ch == "," and depth == 0:
                first = item.split()[0] if item.split() else ""
                if first and first.upper() not in _NOT_COLUMNS:
                    cols.add(first)
                item = ""
                continue
            depth += {"(": 1, ")": -1}.get(ch, 0)
            item += ch
    for name, body in re.findall(r"ALTER TABLE (\w+)(.*?);", sql, re.S):
        tables.setdefault(name, set()).update(re.findall(r"ADD COLUMN (\w+)", body))
    return tables


def _schema() -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    assert SPEC.migrations is not None
    for path in sorted(SPEC.migrations.glob("*.sql")):
        for name, cols in schema_columns(path.read_text()).items():
            tables.setdefault(name, set()).update(cols)
    return tables


def test_the_parser_reads_columns_not_constraints() -> None:
    sql = """CREATE TABLE t (
        a uuid NOT NULL REFERENCES x ON DELETE CASCADE,
        b numeric(4, 2),  -- a comment, with a comma
        c text CHECK (c IN ('x', 'y')),
        PRIMARY KEY (a, b),
        CHECK (a <> b)
    );
    ALTER TABLE t
        ADD COLUMN d text,
        ADD COLUMN e boolean NOT NULL DEFAULT false;"""
    assert schema_columns(sql) == {"t": {"a", "b", "c", "d", "e"}}


def test_every_column_of_the_customers_schema_is_exported() -> None:
    schema = _schema()
    assert set(schema) == set(EXPORT_COLUMNS) | set(NOT_CUSTOMER_DATA), (
        "a table is neither exported nor declared to hold no customer data")
    for table, columns in EXPORT_COLUMNS.items():
        assert set(columns) == schema[table], f"{table}: export columns differ from the schema"
