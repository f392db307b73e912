"""Brain runs: their records, results tables, history and Parquet copies."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from dagster_brain.names import check_name
from dagster_brain.redact import redact
from dagster_brain.store.connection import Transaction
from dagster_brain.store.core import pins
from dagster_brain.store.embeddings import EmbeddingTables
from dagster_brain.store.errors import StoreError
from dagster_brain.store.mirror import records_of, remove_copy, remove_tree, write_copy
from dagster_brain.store.records import BrainRunRecord, record_from_row, utcnow
from dagster_brain.store.tables import extra_table_name, quote, results_table_name

# Run ids of runs written outside Dagster (the API and CLI) start with this (runs.new_record).
ADHOC_RUN_PREFIX = "api-"


class RunTables(EmbeddingTables):
    """Brain runs (tables ``brain_runs``, ``brain_run_history`` and schema ``results``)."""

    @pins
    def commit_run(
        self,
        record: BrainRunRecord,
        results: pd.DataFrame | None,
        event: str = "materialized",
        extra: dict[str, pd.DataFrame | pa.Table] | None = None,
    ) -> BrainRunRecord:
        """Record a brain run and replace its results table, in one transaction.

        If anything fails, the previous run record, results table and Parquet copy stay.
        The record's ``config`` and ``upstream`` are stored redacted (credentials masked).
        ``event`` is what the history table records (``materialized``, ``updated``...).
        ``extra`` holds further named tables of the run (``results."<ds>__<key>__<name>"``,
        e.g. per-object rows beside per-sample results); they move and go with the run.
        """
        for name in extra or {}:
            check_name(name, "results table name")
        record.artifacts = [a for a in record.artifacts if a.get("type") != "table"] + [
            {"type": "table", "name": name} for name in (extra or {})
        ]
        self.require_dataset(record.dataset)
        check_name(record.brain_key, "brain key")
        existing = self.get_run(record.dataset, record.brain_key, missing_ok=True)
        if existing is not None and existing.kind != record.kind:
            raise StoreError(
                f"brain key {record.brain_key!r} already holds a {existing.kind} run on "
                f"{record.dataset!r}; delete or rename it before running {record.kind}"
            )
        record.created_at = utcnow()
        record.config = redact(record.config)
        record.upstream = redact(record.upstream)
        table = results_table_name(record.dataset, record.brain_key)
        record.results_table = table if results is not None else None
        with self.transaction() as tx:
            if results is not None:
                tx.register("new_results", results)
                tx.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM new_results")
                tx.unregister("new_results")
            else:
                tx.execute(f"DROP TABLE IF EXISTS {table}")
            tx.execute(
                "INSERT OR REPLACE INTO brain_runs VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                record.row(),
            )
            self._history(tx, record, event)
            if results is not None:
                self._mirror(tx, record.dataset, f"results/{record.brain_key}", f"FROM {table}")
            for name, frame in (extra or {}).items():
                extra_table = extra_table_name(record.dataset, record.brain_key, name)
                tx.register("new_extra", frame)
                tx.execute(f"CREATE OR REPLACE TABLE {extra_table} AS SELECT * FROM new_extra")
                tx.unregister("new_extra")
                self._mirror(
                    tx, record.dataset, f"results/{record.brain_key}__{name}", f"FROM {extra_table}"
                )
        return record

    @pins
    def load_extra(
        self, dataset: str, brain_key: str, name: str, arrow: bool = False
    ) -> pd.DataFrame | pa.Table:
        """One of a run's further tables (see ``commit_run(extra=...)``); ``arrow``: as an
        Arrow table (list columns stay columnar)."""
        names = self.get_run(dataset, brain_key).table_names()
        if name not in names:
            raise StoreError(
                f"brain run {brain_key!r} on {dataset!r} has no table {name!r} (tables: {names})"
            )
        sql = f"SELECT * FROM {extra_table_name(dataset, brain_key, name)}"
        if not arrow:
            return self.query(sql)
        with self.connect() as conn:
            return conn.sql(sql).to_arrow_table()

    def _history(
        self, tx: Transaction, record: BrainRunRecord, event: str, detail: str = ""
    ) -> None:
        tx.execute(
            "INSERT INTO brain_run_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                record.dataset,
                record.brain_key,
                record.kind,
                event,
                utcnow(),
                record.run_id,
                record.code_version,
                record.data_version,
                json.dumps(redact(record.upstream), sort_keys=True, default=str),
                detail,
            ],
        )

    def get_run(self, dataset: str, brain_key: str, missing_ok: bool = False):
        """The run record of a brain key (``None`` or a clear error if there is none)."""
        check_name(brain_key, "brain key")
        df = self.query(
            "SELECT * FROM brain_runs WHERE dataset = ? AND brain_key = ?", [dataset, brain_key]
        )
        if df.empty:
            if missing_ok:
                return None
            keys = ", ".join(self.list_runs(dataset)["brain_key"]) or "none"
            raise StoreError(f"dataset {dataset!r} has no brain run {brain_key!r} (runs: {keys})")
        return record_from_row(df.iloc[0])

    def list_runs(
        self, dataset: str, kind: str | None = None, method: str | None = None
    ) -> pd.DataFrame:
        """(brain_key, kind, method, created_at, owner) of a dataset's runs, filtered.

        ``owner``: ``asset`` for a run written by a Dagster run (the key's asset), ``adhoc``
        for one written by the API or CLI on a key that no asset owns.
        """
        sql = (
            "SELECT brain_key, kind, method, created_at, CASE WHEN run_id IS NULL OR "
            "starts_with(run_id, ?) THEN 'adhoc' ELSE 'asset' END AS owner "
            "FROM brain_runs WHERE dataset = ?"
        )
        params: list[Any] = [ADHOC_RUN_PREFIX, dataset]
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if method:
            sql += " AND method = ?"
            params.append(method)
        return self.query(sql + " ORDER BY brain_key", params)

    def load_results(self, dataset: str, brain_key: str) -> pd.DataFrame:
        """A run's results table."""
        record = self.get_run(dataset, brain_key)
        if record.results_table is None:
            return pd.DataFrame()
        return self.query(f"SELECT * FROM {results_table_name(dataset, brain_key)}")

    @pins
    def rename_run(self, dataset: str, brain_key: str, new_key: str) -> None:
        """Move a run (record, results table, Parquet copy) to a new brain key."""
        check_name(new_key, "brain key")
        record = self.get_run(dataset, brain_key)
        if self.get_run(dataset, new_key, missing_ok=True) is not None:
            raise StoreError(f"dataset {dataset!r} already has a brain run {new_key!r}")
        extras = record.table_names()
        moves, artifacts = _renamed_files(record.artifacts, brain_key, new_key)
        with self.transaction() as tx:
            new_table = None
            if record.results_table:
                new_table = results_table_name(dataset, new_key)
                tx.execute(
                    f"ALTER TABLE {results_table_name(dataset, brain_key)} "
                    f"RENAME TO {quote(f'{dataset}__{new_key}')}"
                )
            for name in extras:
                tx.execute(
                    f"ALTER TABLE {extra_table_name(dataset, brain_key, name)} RENAME TO "
                    f"{quote(f'{dataset}__{new_key}__{name}')}"
                )
            tx.execute(
                "UPDATE brain_runs SET brain_key = ?, results_table = ?, artifacts = ? "
                "WHERE dataset = ? AND brain_key = ?",
                [new_key, new_table, json.dumps(artifacts, sort_keys=True), dataset, brain_key],
            )
            self._history(tx, record, "renamed", detail=f"to {new_key}")
            # the new key's copy and record are written with the rename (the old ones go after)
            if new_table is not None:
                self._mirror(tx, dataset, f"results/{new_key}", f"SELECT * FROM {new_table}")
            else:
                for name, sql, args in records_of(dataset, f"results/{new_key}"):
                    write_copy(tx, self._parquet_path(dataset, name), sql, args, record=True)
        remove_copy(self.parquet_dir, dataset, f"results/{brain_key}")
        for name in extras:
            old_x = self._parquet_path(dataset, f"results/{brain_key}__{name}")
            if old_x.exists():
                os.replace(old_x, self._parquet_path(dataset, f"results/{new_key}__{name}"))
        for src, dst in moves:  # files named after the key (plots): a new run of the old key
            if src.exists():  # would write over them
                os.replace(src, dst)

    @pins
    def delete_run(self, dataset: str, brain_key: str) -> BrainRunRecord:
        """Delete a run's record, results table, Parquet copy and files it wrote."""
        record = self.get_run(dataset, brain_key)
        extras = record.table_names()
        with self.transaction() as tx:
            tx.execute(f"DROP TABLE IF EXISTS {results_table_name(dataset, brain_key)}")
            for name in extras:
                tx.execute(f"DROP TABLE IF EXISTS {extra_table_name(dataset, brain_key, name)}")
            tx.execute(
                "DELETE FROM brain_runs WHERE dataset = ? AND brain_key = ?", [dataset, brain_key]
            )
            self._history(tx, record, "deleted")
        remove_copy(self.parquet_dir, dataset, f"results/{brain_key}")  # and its record
        for name in extras:
            self._parquet_path(dataset, f"results/{brain_key}__{name}").unlink(missing_ok=True)
        for art in record.artifacts:
            if art.get("type") == "path":
                remove_tree(Path(art["path"]))
            elif art.get("type") == "embeddings":
                self.delete_embeddings(dataset, art["key"])
        return record

    def export_results(self, dataset: str, brain_key: str, out: str | os.PathLike) -> Path:
        """Write a run's results (ids plus every score column) to a Parquet file, atomically."""
        df = self.load_results(dataset, brain_key)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
        return out


def _renamed_files(
    artifacts: list[dict[str, Any]], brain_key: str, new_key: str
) -> tuple[list[tuple[Path, Path]], list[dict[str, Any]]]:
    """The files a run lists that are named after its brain key (``<key>.png``), each with
    its name under the new key, and the artifact list pointing at the new names."""
    moves, out = [], []
    for art in artifacts:
        path = Path(art["path"]) if art.get("type") == "path" else None
        if path is not None and path.stem == brain_key and path.suffix:
            new = path.with_name(f"{new_key}{path.suffix}")
            moves.append((path, new))
            art = {**art, "path": str(new)}
        out.append(art)
    return moves, out
