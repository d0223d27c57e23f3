"""The shared results store of a sweep: one SQLite file (standard library).

Each result is one row keyed by (run hash, sparsity, regime, variant); writers use ``INSERT OR IGNORE`` inside a
transaction with a busy timeout, so concurrent workers neither lose nor duplicate a row. A local sweep's workers
share one host and use WAL mode; a cluster sweep (:mod:`kdprune.experiments.cluster`) has one writer and uses the
rollback journal (``wal=False``), since WAL needs memory shared by every process that opens the file, which a
network filesystem does not give across hosts.
"""

from __future__ import annotations

import sqlite3
import typing
from dataclasses import fields
from pathlib import Path

from kdprune.methods.result import ResultRow

KEY = ("run", "target_sparsity", "regime", "variant")
COLUMNS = ["run", *ResultRow.columns()]  # one column per field of the one result schema


def _sql_type(tp) -> str:
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    return {int: "INTEGER", float: "REAL"}.get(base, "TEXT")


def _schema() -> str:
    types = typing.get_type_hints(ResultRow)
    cols = ["run TEXT NOT NULL"] + [f"{f.name} {_sql_type(types[f.name])}" + (" NOT NULL" if f.name in KEY else "")
                                    for f in fields(ResultRow)]
    return f"CREATE TABLE IF NOT EXISTS results ({', '.join(cols)}, PRIMARY KEY ({', '.join(KEY)}))"


SCHEMA = _schema()


def connect(path: str | Path, wal: bool = True) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
    con.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
    con.execute("PRAGMA busy_timeout=60000")
    con.execute(SCHEMA)
    return con


def readable(path: str | Path) -> bool:
    """True when ``path`` is absent or a results store of this layout that SQLite can read (a store of an
    earlier layout is not: the sweep sets it aside and rebuilds it from the runs' ``results.jsonl``)."""
    path = Path(path)
    if not path.exists():
        return True
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60.0)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            cols = [r[1] for r in con.execute("PRAGMA table_info(results)")]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False
    return not cols or cols == COLUMNS


def set_aside(path: str | Path) -> Path:
    """Move an unreadable store (and its WAL files) out of the way; returns where it went."""
    import time

    path = Path(path)
    dest = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(dest)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.replace(dest.with_name(dest.name + suffix))
    return dest


def add_rows(path: str | Path, run: str, rows: list[dict], wal: bool = True) -> int:
    """Insert ``rows`` of one run; returns how many were new."""
    con = connect(path, wal)
    try:
        con.execute("BEGIN IMMEDIATE")
        before = con.total_changes
        con.executemany(f"INSERT OR IGNORE INTO results VALUES ({', '.join('?' * len(COLUMNS))})",
                        [(run, *_values(r)) for r in rows])
        con.execute("COMMIT")
        return con.total_changes - before
    finally:
        con.close()


def add_run(path: str | Path, run_dir: str | Path, wal: bool = True) -> int:
    """Insert the rows of a finished run folder (its ``results.jsonl``, keyed by the folder's name)."""
    from kdprune.io import read_jsonl

    run_dir = Path(run_dir)
    return add_rows(path, run_dir.name, read_jsonl(run_dir / "results.jsonl"), wal)


def _values(row: dict) -> tuple:
    r = ResultRow.from_dict(row)
    return tuple(getattr(r, c) for c in COLUMNS[1:])


def all_rows(path: str | Path, wal: bool = True) -> list[dict]:
    con = connect(path, wal)
    try:
        cur = con.execute(f"SELECT {', '.join(COLUMNS[1:])} FROM results ORDER BY {', '.join(KEY)}")
        return [ResultRow(*values).to_dict() for values in cur]
    finally:
        con.close()
