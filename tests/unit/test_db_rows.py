"""How db.Rows turns batches into one statement (the database side is in
tests/integration: test_contact_batches, test_write_unit, test_query_plans)."""

from __future__ import annotations

from typing import Any

import pytest

from crm_runtime import db

SMALL = db.Rows("unit_small_batch", [("id", "uuid"), ("name", "text")], schema="unit_a")
OTHER = db.Rows("unit_other_batch", [("n", "int")], schema="unit_b")
JOINED = db.Rows("unit_joined_batch", [("id", "uuid"), ("n", "int")], schema="unit_a",
                 copy_from=None)
INSERTED = db.Rows("unit_inserted_batch", [("id", "uuid"), ("n", "int")], schema="unit_a",
                   into="unit_table")


class _Conn:
    """Records what load_rows sends; only the calls it makes."""

    def __init__(self) -> None:
        self.copies: list[tuple[str, list[Any], str]] = []

    async def copy_records_to_table(self, table: str, *, records: list[Any],
                                    schema_name: str = "", columns: Any = None) -> None:
        self.copies.append((table, list(records), schema_name or f"columns {columns}"))


async def test_small_batches_are_arrays_numbered_across_batches() -> None:
    conn = _Conn()
    sql, params = await db.load_rows(conn, "WITH a AS ({unit_small_batch}), "  # type: ignore[arg-type]
                                     "b AS ({unit_other_batch}) SELECT 1",
                                     {SMALL: [("u1", "x"), ("u2", "y")], OTHER: [(7,)]})
    assert sql == ("WITH a AS (SELECT * FROM unnest($1::uuid[], $2::text[]) AS u(id, name)), "
                   "b AS (SELECT * FROM unnest($3::int[]) AS u(n)) SELECT 1")
    assert params == [["u1", "u2"], ["x", "y"], [7]]
    assert conn.copies == []


async def test_a_batch_from_copy_from_rows_is_copied_and_taken_back() -> None:
    conn = _Conn()
    rows = [(i,) for i in range(OTHER.COPY_FROM)]
    sql, params = await db.load_rows(conn, "WITH a AS ({unit_small_batch}), "  # type: ignore[arg-type]
                                     "b AS ({unit_other_batch}) SELECT 1",
                                     {SMALL: [("u1", "x")], OTHER: rows})
    assert conn.copies == [("unit_other_batch", rows, "pg_temp")]
    assert "b AS (DELETE FROM pg_temp.unit_other_batch RETURNING n)" in sql
    assert params == [["u1"], ["x"]]


async def test_joined_rows_stay_arrays_at_any_size() -> None:
    conn = _Conn()
    rows = [("u", i) for i in range(10 * db.Rows.COPY_FROM)]
    sql, params = await db.load_rows(conn, "{unit_joined_batch}", {JOINED: rows})  # type: ignore[arg-type]
    assert conn.copies == [] and sql.startswith("SELECT * FROM unnest($1::uuid[], $2::int[])")
    assert len(params[0]) == len(rows)


async def test_inserted_rows_are_copied_straight_into_their_table() -> None:
    conn: Any = _Conn()
    insert = "INSERT INTO unit_table SELECT * FROM ({unit_inserted_batch})"
    small = await db.load_rows(conn, insert, {INSERTED: [("u", 1)]})
    assert small == ("INSERT INTO unit_table SELECT * FROM (SELECT * FROM unnest($1::uuid[], "
                     "$2::int[]) AS u(id, n))", [["u"], [1]])
    rows = [("u", i) for i in range(db.Rows.COPY_FROM)]
    sql, params = await db.load_rows(conn, insert, {INSERTED: rows})
    assert conn.copies == [("unit_table", rows, "columns ['id', 'n']")]
    # The statement inserts nothing more.
    assert sql == ("INSERT INTO unit_table SELECT * FROM "
                   "(SELECT NULL::uuid AS id, NULL::int AS n WHERE false)")
    assert params == []


def test_a_connection_creates_the_temporary_tables_of_its_schema_only() -> None:
    assert db.temporary_tables("unit_a") == [
        "CREATE TEMPORARY TABLE IF NOT EXISTS unit_small_batch (id uuid, name text) "
        "ON COMMIT DELETE ROWS"]  # the joined and inserted batches need no table
    assert db.temporary_tables("unit_b") == [
        "CREATE TEMPORARY TABLE IF NOT EXISTS unit_other_batch (n int) ON COMMIT DELETE ROWS"]
    assert db.temporary_tables(None) == []
    assert db.temporary_tables("customers") == []


def test_two_different_batches_cannot_share_a_name() -> None:
    db.Rows("unit_small_batch", [("id", "uuid"), ("name", "text")], schema="unit_a")  # again
    with pytest.raises(ValueError, match="unit_small_batch"):
        db.Rows("unit_small_batch", [("id", "uuid")], schema="unit_a")
    with pytest.raises(ValueError):
        db.Rows("unit batch; DROP TABLE x", [("id", "uuid")], schema="unit_a")
