"""Store health: a store checked against itself, repairs from the truth, and restore.

DuckDB (``brain.duckdb``) is the truth; the Parquet copies and the similarity indexes are
derived from it. :func:`examine` finds what disagrees (a damaged database file, missing or
short copies, an index whose backend lacks vectors its run recorded, index files no run
refers to, locks of dead runs); :func:`repair` rebuilds what can be rebuilt from the truth
and touches nothing it cannot verify; :func:`restore` rebuilds ``brain.duckdb`` from the
Parquet copies. :func:`quick_check` is the cheap subset, for an asset check.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dagster_brain.names import BrainNameError, check_name
from dagster_brain.store import Store, StoreError
from dagster_brain.store.connection import StoreDamaged, connect
from dagster_brain.store.core import DB_NAME, has_parquet_copies
from dagster_brain.store.embeddings import KEY_COPY_SQL
from dagster_brain.store.hashing import embeddings_version, rows_digest
from dagster_brain.store.locks import takeover_reason
from dagster_brain.store.mirror import PARTS, RECORDS, copy_files, parquet_path, remove_tree
from dagster_brain.store.records import utcnow
from dagster_brain.store.samples import SAMPLES_COPY_SQL
from dagster_brain.store.schema import migrate
from dagster_brain.store.tables import qualified, quote
from dagster_brain.store.vectors import arrow_to_vectors

DOCTOR_HOLDER = "brain doctor"
SCAN_BATCH = 65_536  # rows per batch when reading every table to find bad blocks


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a store: what, where, and what to do."""

    code: str  # db_missing, db_damaged, copy_missing, copy_rows, copy_version, copy_stale,
    # record_stale, part_stale, results_missing, index_missing, index_short, index_extra,
    # index_unchecked, orphan_index, dead_lock
    what: str
    fix: str
    dataset: str | None = None
    brain_key: str | None = None
    path: str | None = None
    repairable: bool = False

    @property
    def where(self) -> str:
        """Dataset, brain key and file, as far as they apply."""
        parts = []
        if self.dataset:
            parts.append(f"dataset {self.dataset!r}")
        if self.brain_key:
            parts.append(f"brain key {self.brain_key!r}")
        if self.path:
            parts.append(self.path)
        return ", ".join(parts) or "store"

    def __str__(self) -> str:
        return f"{self.code}: {self.what} [{self.where}] -> {self.fix}"


@dataclass
class DoctorReport:
    """What :func:`doctor` found, what it repaired, and what is still wrong."""

    findings: list[Finding]
    repaired: list[str] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Nothing found (or, after a repair, nothing left)."""
        return not self.remaining


REPAIR_FIX = "`brain doctor --repair` rebuilds it from DuckDB"


# -- the database file ------------------------------------------------------------------------


def check_database(data_dir: str | os.PathLike, timeout_s: float = 120.0) -> list[Finding]:
    """``brain.duckdb`` missing beside Parquet copies, or unreadable: opened and every table
    read to the end (DuckDB checks each block's checksum as it reads it)."""
    data_dir = Path(data_dir).expanduser().resolve()
    db = data_dir / DB_NAME
    copies = has_parquet_copies(data_dir / "parquet")
    if not db.exists():
        if not copies:
            return []
        return [
            Finding(
                "db_missing",
                f"{DB_NAME} is missing beside the store's Parquet copies",
                f"rebuild it with `brain restore --data-dir {data_dir}`",
                path=str(db),
            )
        ]
    try:
        with connect(db, timeout_s) as conn:
            for schema, name in _all_tables(conn):
                sql = f"SELECT * FROM {qualified(schema, name)}"
                for _ in conn.sql(sql).to_arrow_reader(SCAN_BATCH):
                    pass
    except StoreDamaged as err:
        fix = (
            "restore it with `brain restore` from the Parquet copies"
            if copies
            else "no Parquet copies to restore from: re-ingest and re-materialise"
        )
        return [Finding("db_damaged", str(err).split(";")[0], fix, path=str(db))]
    return []


def _all_tables(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() ORDER BY 1, 2"
    ).fetchall()


# -- Parquet copies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Copy:
    """A copy the store should have: its name, the SQL that writes it, rows, data version."""

    name: str
    sql: str
    params: tuple[Any, ...]
    rows: int
    version: str | None = None  # embeddings keys: the recorded data version
    brain_key: str | None = None


def _expected_copies(store: Store, dataset: str) -> list[_Copy]:
    def count(sql: str, params: list[Any]) -> int:
        return int(store.query(sql, params).iloc[0, 0])

    out = [
        _Copy(
            "samples",
            SAMPLES_COPY_SQL,
            (dataset,),
            count("SELECT count(*) FROM samples WHERE dataset = ?", [dataset]),
        )
    ]
    for _, row in store.embedding_sets(dataset).iterrows():
        key = row["embeddings_key"]
        n = count(
            "SELECT count(*) FROM embeddings WHERE dataset = ? AND embeddings_key = ?",
            [dataset, key],
        )
        version = row["data_version"] if isinstance(row["data_version"], str) else None
        out.append(_Copy(f"embeddings/{key}", KEY_COPY_SQL, (dataset, key), n, version))
    for key in store.list_runs(dataset)["brain_key"]:
        record = store.get_run(dataset, key)
        names = ([""] if record.results_table else []) + [f"__{t}" for t in record.table_names()]
        for suffix in names:
            table = qualified("results", f"{dataset}__{key}{suffix}")
            if not _table_exists(store, "results", f"{dataset}__{key}{suffix}"):
                continue  # reported as results_missing
            n = count(f"SELECT count(*) FROM {table}", [])
            out.append(_Copy(f"results/{key}{suffix}", f"FROM {table}", (), n, brain_key=key))
    for name in _view_names(store, dataset):
        table = qualified("views", f"{dataset}__{name}")
        out.append(
            _Copy(f"views/{name}", f"FROM {table}", (), count(f"SELECT count(*) FROM {table}", []))
        )
    return out


def _table_exists(store: Store, schema: str, name: str) -> bool:
    return bool(
        store.query(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = ? AND table_name = ?",
            [schema, name],
        ).iloc[0, 0]
    )


def _view_names(store: Store, dataset: str) -> list[str]:
    rows = store.query(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'views' AND starts_with(table_name, ?) ORDER BY 1",
        [f"{dataset}__"],
    )
    return [t[len(dataset) + 2 :] for t in rows["table_name"]]


def _copy_version(path: Path) -> str:
    """The data version of an embeddings copy (its file and appended parts), from its rows."""
    table = pa.concat_tables(
        pq.read_table(f, columns=["sample_id", "label_id", "vector"]) for f in copy_files(path)
    )
    labels = table.column("label_id").to_pylist()
    ids = labels if any(x is not None for x in labels) else table.column("sample_id").to_pylist()
    if not len(ids):
        return embeddings_version(0, 0)
    vectors = arrow_to_vectors(table.column("vector"), 0)
    return embeddings_version(len(ids), rows_digest(ids, vectors))


def check_copies(store: Store, dataset: str, versions: bool = True) -> list[Finding]:
    """Parquet copies against their tables: missing, wrong row count, wrong data version
    (embeddings keys; ``versions=False`` skips reading the vectors), records beside them
    missing or left from deleted copies, copies of tables DuckDB does not have."""
    findings = []
    expected = _expected_copies(store, dataset)
    for copy in expected:
        path = store.parquet_path(dataset, copy.name)
        where = {"dataset": dataset, "brain_key": copy.brain_key, "path": str(path)}
        if not path.exists():
            findings.append(
                Finding(
                    "copy_missing",
                    f"Parquet copy {copy.name!r} is missing",
                    REPAIR_FIX,
                    repairable=True,
                    **where,
                )
            )
            continue
        try:
            rows = sum(pq.read_metadata(f).num_rows for f in copy_files(path))
        except Exception as err:  # an unreadable copy is as good as a missing one
            findings.append(
                Finding(
                    "copy_missing",
                    f"Parquet copy {copy.name!r} cannot be read ({err})",
                    REPAIR_FIX,
                    repairable=True,
                    **where,
                )
            )
            continue
        if rows != copy.rows:
            findings.append(
                Finding(
                    "copy_rows",
                    f"Parquet copy {copy.name!r} has {rows} rows; DuckDB has {copy.rows}",
                    REPAIR_FIX,
                    repairable=True,
                    **where,
                )
            )
        elif versions and copy.version is not None and _copy_version(path) != copy.version:
            findings.append(
                Finding(
                    "copy_version",
                    f"Parquet copy {copy.name!r} holds other vectors than DuckDB "
                    f"(data version {copy.version})",
                    REPAIR_FIX,
                    repairable=True,
                    **where,
                )
            )
    findings += _check_records(store, dataset, expected)
    return findings


def _record_names(name: str) -> list[str]:
    """The records copied beside copy ``name`` (see ``mirror.records_of``)."""
    from dagster_brain.store.mirror import records_of

    return [r for r, _, _ in records_of("x", name)]


def _check_records(store: Store, dataset: str, expected: list[_Copy]) -> list[Finding]:
    findings = []
    root = store.parquet_dir / dataset
    wanted = {c.name for c in expected}
    records = {r: c for c in expected for r in _record_names(c.name)}
    for record, copy in records.items():
        path = store.parquet_path(dataset, record)
        if not path.exists() and store.parquet_path(dataset, copy.name).exists():
            findings.append(
                Finding(
                    "copy_missing",
                    f"record copy {record!r} (beside {copy.name!r}) is missing",
                    REPAIR_FIX,
                    dataset=dataset,
                    brain_key=copy.brain_key,
                    path=str(path),
                    repairable=True,
                )
            )
    copies = [store.parquet_path(dataset, c.name) for c in expected]
    parts = {f for path in copies if path.exists() for f in copy_files(path)[1:]}
    for path in sorted(root.rglob("*.parquet")) if root.is_dir() else []:
        name = path.relative_to(root).with_suffix("").as_posix()
        if name in wanted or name in records or path in parts:
            continue
        copy = path.parent.name.removesuffix(PARTS)
        if path.parent.name.endswith(PARTS) and path.parent.with_name(f"{copy}.parquet") in copies:
            # appended to an earlier generation of the copy: a rewrite did not remove it
            findings.append(
                Finding(
                    "part_stale",
                    f"Parquet part {name!r} belongs to an earlier version of its copy",
                    "`brain doctor --repair` removes it",
                    dataset=dataset,
                    path=str(path),
                    repairable=True,
                )
            )
        elif name.startswith(f"{RECORDS}/"):
            # a record whose copy is gone (the run was deleted or renamed): restore skips it
            findings.append(
                Finding(
                    "record_stale",
                    f"record copy {name!r} describes a table DuckDB no longer has",
                    "`brain doctor --repair` removes it",
                    dataset=dataset,
                    path=str(path),
                    repairable=True,
                )
            )
        else:
            findings.append(
                Finding(
                    "copy_stale",
                    f"Parquet copy {name!r} has no table in DuckDB (`brain restore` would "
                    "bring it back)",
                    "delete the file if its table was removed on purpose",
                    dataset=dataset,
                    path=str(path),
                )
            )
    return findings


def repair_copy(store: Store, dataset: str, finding: Finding) -> str:
    """Rewrite a copy (and its records) from DuckDB, or remove a stale record."""
    path = Path(finding.path or "")
    if finding.code in ("record_stale", "part_stale"):
        path.unlink(missing_ok=True)
        return f"removed stale {'record copy' if finding.code == 'record_stale' else 'part'} {path}"
    by_path = {}
    for copy in _expected_copies(store, dataset):
        by_path[store.parquet_path(dataset, copy.name)] = copy
        for record in _record_names(copy.name):
            by_path[store.parquet_path(dataset, record)] = copy
    copy = by_path.get(path)
    if copy is None:
        raise StoreError(f"no table of dataset {dataset!r} is copied to {path}")
    store.refresh_copy(dataset, copy.name, copy.sql, list(copy.params))
    return f"rewrote Parquet copy {copy.name!r} of {dataset!r} from DuckDB"


# -- similarity indexes -----------------------------------------------------------------------


def _similarity_runs(store: Store, dataset: str) -> list[Any]:
    return [
        store.get_run(dataset, k) for k in store.list_runs(dataset, kind="similarity")["brain_key"]
    ]


def _rebuildable(store: Store, dataset: str, record: Any) -> tuple[bool, str]:
    """Whether the index can be rebuilt to what it was: its embeddings key holds the vectors
    it was built from (same data version as recorded)."""
    key = record.config.get("index", {}).get("embeddings_key")
    sets = store.embedding_sets(dataset)
    row = sets[sets["embeddings_key"] == key]
    if key is None or row.empty:
        return False, (
            f"embeddings key {key!r} is gone: re-materialise brain key {record.brain_key!r} "
            "from new embeddings"
        )
    recorded = record.upstream.get("embeddings", {}).get("data_version")
    now = row.iloc[0]["data_version"]
    if recorded is not None and recorded != now:
        return False, (
            f"embeddings key {key!r} changed since the index was built (data version "
            f"{recorded} -> {now}): re-materialise brain key {record.brain_key!r}"
        )
    return True, (
        f"`brain doctor --dataset {dataset} --repair` rebuilds it from embeddings key {key!r}"
    )


def check_indexes(store: Store, dataset: str, ids: bool = True) -> list[Finding]:
    """Each similarity run's index against its membership: the backend's own count (and,
    with ``ids``, which of the run's ids it holds); a missing file or collection."""
    from dagster_brain.similarity.compute import load_index

    findings = []
    for record in _similarity_runs(store, dataset):
        key = record.brain_key
        try:
            index = load_index(store, dataset, key)
        except Exception as err:
            findings.append(
                Finding(
                    "index_unchecked",
                    f"index cannot be opened: {err}",
                    "check the backend settings and that it is reachable, then run "
                    "`brain doctor` again",
                    dataset=dataset,
                    brain_key=key,
                )
            )
            continue
        try:
            members = index.members["id"].tolist()
            where = getattr(index.backend, "path", None) or getattr(index.backend, "where", None)
            path = str(where) if where else None
            count = index.total_index_size
            held = len(index.held_ids(members)) if ids else min(count, len(members))
        except Exception as err:
            findings.append(
                Finding(
                    "index_unchecked",
                    f"index cannot be read: {err}",
                    "check that the backend is reachable, then run `brain doctor` again",
                    dataset=dataset,
                    brain_key=key,
                )
            )
            continue
        finally:
            index.close()
        ok, fix = _rebuildable(store, dataset, record)
        what = f"{index.config.backend} {index.backend.noun} {index.config.collection!r}"
        base = {"dataset": dataset, "brain_key": key, "path": path, "repairable": ok}
        if members and held == 0:
            gone = (
                " (its file is gone)"
                if path and not Path(path).exists() and "://" not in path
                else ""
            )
            findings.append(
                Finding(
                    "index_missing",
                    f"{what} holds none of the {len(members)} vectors the run recorded{gone}",
                    fix,
                    **base,
                )
            )
        elif held < len(members):
            findings.append(
                Finding(
                    "index_short",
                    f"{what} holds {held} of the {len(members)} vectors the run recorded",
                    fix,
                    **base,
                )
            )
        if count > held and (ids or count > len(members)):
            findings.append(
                Finding(
                    "index_extra",
                    f"{what} holds {count - held} vectors the run does not record",
                    fix,
                    **base,
                )
            )
    return findings


def repair_index(store: Store, dataset: str, brain_key: str) -> str:
    """Rebuild a similarity index from its embeddings key, through the normal build (a new
    collection, the run record switched to it, the old one dropped), holding the brain key."""
    from dagster_brain.similarity.compute import build_index
    from dagster_brain.specs import SimilaritySpec

    with store.run_lock(dataset, brain_key, DOCTOR_HOLDER):
        record = store.get_run(dataset, brain_key)
        ok, why = _rebuildable(store, dataset, record)
        if not ok:
            raise StoreError(f"brain key {brain_key!r} on {dataset!r}: {why}")
        spec = SimilaritySpec.model_validate(record.config["spec"])
        members = store.load_results(dataset, brain_key)
        wanted = sorted(set(members["sample_id"]))
        in_key = store.embedded_sample_ids(dataset, spec.embeddings)
        index, new, _ = build_index(
            spec,
            store,
            run_id=record.run_id,
            ids=None if wanted == in_key else wanted,
            params=record.config["index"].get("params"),
            artifacts=record.artifacts,
        )
        n = len(index.members)
        index.close()
    return (
        f"rebuilt index {brain_key!r} of {dataset!r} from embeddings key {spec.embeddings!r}: "
        f"{n} vectors in collection {new.config['index']['collection']!r}"
    )


# -- orphan index files -----------------------------------------------------------------------

# What each embedded backend leaves under indexes/<dataset>/ for a collection (the group)
_INDEX_ENTRIES = (
    re.compile(r"^(?P<c>brain_.+_[0-9a-f]{8})\.parquet$"),  # sklearn
    re.compile(r"^(?P<c>brain_.+_[0-9a-f]{8})\.\d+\.\d+\.parquet$"),  # sklearn, appended parts
    re.compile(r"^\.(?P<c>brain_.+_[0-9a-f]{8})\.parquet\.\d+\.tmp$"),  # sklearn, half-written
    re.compile(r"^qdrant_(?P<c>brain_.+_[0-9a-f]{8})$"),  # qdrant local mode
    re.compile(r"^milvus_(?P<c>brain_.+_[0-9a-f]{8})\.db$"),  # milvus-lite
    re.compile(r"^lancedb/(?P<c>brain_.+_[0-9a-f]{8})\.lance$"),  # lancedb
)


def _index_entries(folder: Path) -> Iterator[tuple[Path, str]]:
    """(path, collection) of every backend file or folder under an index folder."""
    if not folder.is_dir():
        return
    candidates = list(folder.iterdir())
    if (folder / "lancedb").is_dir():
        candidates += list((folder / "lancedb").iterdir())
    for path in sorted(candidates):
        rel = path.relative_to(folder).as_posix()
        for pattern in _INDEX_ENTRIES:
            m = pattern.match(rel)
            if m:
                yield path, m.group("c")
                break


def _live_locks(store: Store) -> set[tuple[str, str]]:
    return {
        (lock["dataset"], lock["brain_key"]) for lock in _locks(store) if not _lock_dead(lock)[0]
    }


def check_orphans(store: Store, dataset: str | None = None) -> list[Finding]:
    """Index files and folders under ``indexes/`` that no similarity run refers to (keys
    being computed right now, by a live lock holder, are left alone)."""
    root = store.data_dir / "indexes"
    if not root.is_dir():
        return []
    known = set(store.list_datasets())
    live = _live_locks(store)
    findings = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        ds = folder.name
        if dataset is not None and ds != dataset:
            continue
        used = (
            {r.config.get("index", {}).get("collection") for r in _similarity_runs(store, ds)}
            if ds in known
            else set()
        )
        for path, collection in _index_entries(folder):
            if collection in used:
                continue
            key = _key_of(ds, collection)
            if key is not None and (ds, key) in live:
                continue  # being built now: its run is not committed yet
            findings.append(
                Finding(
                    "orphan_index",
                    f"index {'folder' if path.is_dir() else 'file'} of collection "
                    f"{collection!r}: no similarity run refers to it",
                    "`brain doctor --repair` deletes it",
                    dataset=ds,
                    brain_key=key,
                    path=str(path),
                    repairable=True,
                )
            )
    return findings


def _key_of(dataset: str, collection: str) -> str | None:
    prefix = f"brain_{dataset}_"
    if collection.startswith(prefix) and len(collection) > len(prefix) + 9:
        return collection[len(prefix) : -9]
    return None


def repair_orphan(store: Store, finding: Finding) -> str:
    """Delete an orphan index file or folder, after checking again that no run uses it."""
    path = Path(finding.path or "")
    still = {f.path for f in check_orphans(store, finding.dataset)}
    if str(path) not in still:
        return f"left {path}: a run refers to it now"
    remove_tree(path)
    return f"deleted orphan index {'folder' if path.is_dir() else 'file'} {path}"


# -- run locks --------------------------------------------------------------------------------


def _locks(store: Store) -> list[dict[str, Any]]:
    df = store.query(
        "SELECT dataset, brain_key, holder, pid, host, acquired_at, "
        "coalesce(heartbeat_at, acquired_at) AS beat FROM brain_locks ORDER BY 1, 2"
    )
    return df.to_dict("records")


def _lock_dead(lock: dict[str, Any]) -> tuple[bool, str]:
    """Whether a lock's holder is dead, and why: the rule by which the next run of the key
    takes the lock over (``locks.takeover_reason``)."""
    row = (lock["holder"], int(lock["pid"]), lock["host"], lock["acquired_at"])
    beat = pd.Timestamp(lock["beat"]).to_pydatetime()
    why = takeover_reason((*row, beat), socket.gethostname(), utcnow())
    if why is None:
        return False, ""
    return True, why


def check_locks(store: Store, dataset: str | None = None) -> list[Finding]:
    """Run locks whose holder is dead (a pid gone on this host, or a heartbeat older than
    ``LOCK_STALE_S``)."""
    findings = []
    for lock in _locks(store):
        if dataset is not None and lock["dataset"] != dataset:
            continue
        dead, why = _lock_dead(lock)
        if dead:
            findings.append(
                Finding(
                    "dead_lock",
                    f"brain key held by {lock['holder']} (pid {lock['pid']} on {lock['host']}, "
                    f"since {lock['acquired_at']}), whose holder is dead: {why}",
                    "`brain doctor --repair` releases it (the next run would take it over)",
                    dataset=lock["dataset"],
                    brain_key=lock["brain_key"],
                    repairable=True,
                )
            )
    return findings


def release_dead_lock(store: Store, dataset: str, brain_key: str) -> str:
    """Delete a lock row if, checked again inside the transaction, its holder is dead."""
    with store.transaction() as tx:
        rows = tx.execute(
            "SELECT dataset, brain_key, holder, pid, host, acquired_at, "
            "coalesce(heartbeat_at, acquired_at) FROM brain_locks "
            "WHERE dataset = ? AND brain_key = ?",
            [dataset, brain_key],
        ).fetchall()
        if not rows:
            return f"lock of {brain_key!r} on {dataset!r} was already released"
        cols = ["dataset", "brain_key", "holder", "pid", "host", "acquired_at", "beat"]
        lock = dict(zip(cols, rows[0], strict=True))
        dead, why = _lock_dead(lock)
        if not dead:
            return f"left the lock of {brain_key!r} on {dataset!r}: its holder is alive"
        tx.execute(
            "DELETE FROM brain_locks WHERE dataset = ? AND brain_key = ? AND pid = ? "
            "AND host = ? AND acquired_at = ?",
            [dataset, brain_key, lock["pid"], lock["host"], lock["acquired_at"]],
        )
    return f"released the lock of {brain_key!r} on {dataset!r} ({why})"


# -- everything together ----------------------------------------------------------------------


def results_tables(store: Store, dataset: str) -> list[Finding]:
    """Runs whose recorded results table is missing from DuckDB."""
    findings = []
    for key in store.list_runs(dataset)["brain_key"]:
        record = store.get_run(dataset, key)
        if record.results_table and not _table_exists(store, "results", f"{dataset}__{key}"):
            findings.append(
                Finding(
                    "results_missing",
                    f"the run's results table {record.results_table} is missing",
                    f"re-materialise brain key {key!r} (or delete the run)",
                    dataset=dataset,
                    brain_key=key,
                )
            )
    return findings


def examine(store: Store, dataset: str | None = None) -> list[Finding]:
    """Every check on an open store (one dataset, or all)."""
    datasets = [dataset] if dataset is not None else store.list_datasets()
    if dataset is not None:
        store.require_dataset(dataset)
    findings: list[Finding] = []
    for ds in datasets:
        findings += results_tables(store, ds)
        findings += check_copies(store, ds)
        findings += check_indexes(store, ds)
    findings += check_orphans(store, dataset)
    findings += check_locks(store, dataset)
    return findings


def quick_check(store: Store, dataset: str) -> list[Finding]:
    """The cheap checks of one dataset: copies present with the right row counts (no vectors
    read), each index's backend count against its membership, orphan index files, dead locks.
    Meant for a non-blocking asset check; no full read of the database file."""
    findings = results_tables(store, dataset)
    findings += check_copies(store, dataset, versions=False)
    findings += check_indexes(store, dataset, ids=False)
    findings += check_orphans(store, dataset)
    findings += check_locks(store, dataset)
    return findings


def repair(store: Store, findings: list[Finding]) -> list[str]:
    """Repair the repairable findings; returns what was done (one line each)."""
    done: list[str] = []
    rebuilt: set[tuple[str, str]] = set()
    for f in findings:
        if not f.repairable:
            continue
        if f.code in ("copy_missing", "copy_rows", "copy_version", "record_stale", "part_stale"):
            done.append(repair_copy(store, f.dataset or "", f))
        elif f.code in ("index_missing", "index_short", "index_extra"):
            key = (f.dataset or "", f.brain_key or "")
            if key not in rebuilt:
                rebuilt.add(key)
                done.append(repair_index(store, *key))
        elif f.code == "orphan_index":
            done.append(repair_orphan(store, f))
        elif f.code == "dead_lock":
            done.append(release_dead_lock(store, f.dataset or "", f.brain_key or ""))
    return done


def doctor(
    data_dir: str | os.PathLike,
    dataset: str | None = None,
    fix: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> DoctorReport:
    """Check a store (the database file first, then everything else); with ``fix``, repair
    what can be repaired and check again."""
    root = Path(data_dir).expanduser().resolve()
    if not (root / DB_NAME).exists() and not has_parquet_copies(root / "parquet"):
        raise StoreError(f"no store in {root} (no {DB_NAME}, no Parquet copies)")
    findings = check_database(root)
    if findings:  # nothing else can be trusted, or even opened
        return DoctorReport(findings, remaining=list(findings))
    store = Store(root)
    findings = examine(store, dataset)
    report = DoctorReport(findings, remaining=list(findings))
    if fix and any(f.repairable for f in findings):
        for line in repair(store, findings):
            report.repaired.append(line)
            log(line)
        report.remaining = examine(store, dataset)
    return report


# -- restore ----------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    """What :func:`restore` brought back, and what the copies could not give."""

    lines: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    moved_aside: Path | None = None


def restore(
    data_dir: str | os.PathLike, force: bool = False, log: Callable[[str], None] = lambda _: None
) -> RestoreReport:
    """Rebuild ``brain.duckdb`` from the Parquet copies, into a temporary file renamed into
    place at the end. A damaged file is kept beside it as ``brain.duckdb.damaged-<time>``; a
    healthy one is replaced only with ``force``."""
    data_dir = Path(data_dir).expanduser().resolve()
    parquet_dir = data_dir / "parquet"
    db = data_dir / DB_NAME
    if not has_parquet_copies(parquet_dir):
        raise StoreError(f"no Parquet copies in {parquet_dir}: nothing to restore from")
    if db.exists() and not force and not check_database(data_dir):
        raise StoreError(
            f"{db} opens and reads cleanly: restoring would replace it with the Parquet "
            "copies (pass --force to do that anyway, or run `brain doctor --repair` to "
            "rewrite the copies from it)"
        )
    report = RestoreReport()
    tmp = data_dir / f".{DB_NAME}.restore-{os.getpid()}.tmp"
    for stale in (tmp, Path(f"{tmp}.wal")):
        stale.unlink(missing_ok=True)
    try:
        conn = duckdb.connect(str(tmp))
        try:
            migrate(conn)
            for folder in sorted(p for p in parquet_dir.iterdir() if p.is_dir()):
                try:
                    check_name(folder.name, "dataset")
                except BrainNameError:
                    report.missing.append(f"{folder}: not a dataset name, skipped")
                    continue
                _restore_dataset(conn, folder, report, log)
            conn.execute("CHECKPOINT")
        finally:
            conn.close()
        if db.exists():
            report.moved_aside = data_dir / f"{DB_NAME}.damaged-{utcnow():%Y%m%dT%H%M%S}"
            os.replace(db, report.moved_aside)
            wal = Path(f"{db}.wal")
            if wal.exists():  # the old file's log must not be replayed onto the new one
                os.replace(wal, Path(f"{report.moved_aside}.wal"))
        os.replace(tmp, db)
    except BaseException:
        for stale in (tmp, Path(f"{tmp}.wal")):
            stale.unlink(missing_ok=True)
        raise
    report.missing.append(
        "run history and run locks are not copied: the history starts again from here"
    )
    return report


def _rows(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> int:
    return int(conn.execute(sql, params).fetchone()[0])


def _restore_dataset(
    conn: duckdb.DuckDBPyConnection, folder: Path, report: RestoreReport, log: Callable
) -> None:
    """Load one dataset's copies into the new database."""
    ds = folder.name
    records = folder / RECORDS

    def copy(name: str) -> Path:
        return parquet_path(folder.parent, ds, name)

    if copy(f"{RECORDS}/dataset").exists():
        conn.execute(
            "INSERT INTO datasets BY NAME SELECT * FROM read_parquet(?)",
            [str(copy(f"{RECORDS}/dataset"))],
        )
    if not _rows(conn, "SELECT count(*) FROM datasets WHERE dataset = ?", [ds]):
        conn.execute("INSERT INTO datasets VALUES (?, 'image', ?)", [ds, utcnow()])
        report.missing.append(f"{ds}: media type not copied, set to 'image'")
    n_samples = 0
    if copy("samples").exists():
        conn.execute(
            "INSERT INTO samples BY NAME SELECT * FROM read_parquet(?)",
            [[str(f) for f in copy_files(copy("samples"))]],
        )
        n_samples = _rows(conn, "SELECT count(*) FROM samples WHERE dataset = ?", [ds])
    else:
        report.missing.append(f"{ds}: no samples copy")
    n_labels = 0
    for table in ("label_fields", "labels"):
        path = copy(f"{RECORDS}/{table}")
        if path.exists():
            conn.execute(
                f"INSERT INTO {quote(table)} BY NAME SELECT * FROM read_parquet(?)", [str(path)]
            )
        elif n_samples:
            report.missing.append(f"{ds}: {table} not copied (written before copies of records)")
    n_labels = _rows(conn, "SELECT count(*) FROM labels WHERE dataset = ?", [ds])
    keys = []
    for path in sorted((folder / "embeddings").glob("*.parquet")):
        key = path.stem
        check_name(key, "embeddings key")
        conn.execute(
            "INSERT INTO embeddings SELECT ?, ?, sample_id, label_id, vector FROM read_parquet(?)",
            [ds, key, [str(f) for f in copy_files(path)]],
        )
        keys.append(key)
        meta = records / "embedding_sets" / f"{key}.parquet"
        count = _rows(
            conn,
            "SELECT count(*) FROM embeddings WHERE dataset = ? AND embeddings_key = ?",
            [ds, key],
        )
        version = _copy_version(path)
        if meta.exists():
            conn.execute(
                "INSERT INTO embedding_sets BY NAME SELECT * FROM read_parquet(?)", [str(meta)]
            )
            recorded = conn.execute(
                "SELECT count, data_version FROM embedding_sets WHERE dataset = ? "
                "AND embeddings_key = ?",
                [ds, key],
            ).fetchone()
            if recorded != (count, version):
                report.missing.append(
                    f"{ds}: embeddings key {key!r}: record says {recorded}, copy holds "
                    f"{count} rows (version {version}); the copy's figures are kept"
                )
                conn.execute(
                    "UPDATE embedding_sets SET count = ?, data_version = ? WHERE dataset = ? "
                    "AND embeddings_key = ?",
                    [count, version, ds, key],
                )
        else:
            dim = _rows(
                conn,
                "SELECT coalesce(max(len(vector)), 0) FROM embeddings WHERE dataset = ? "
                "AND embeddings_key = ?",
                [ds, key],
            )
            conn.execute(
                "INSERT INTO embedding_sets (dataset, embeddings_key, dim, source, count, "
                "data_version, created_at) VALUES (?, ?, ?, 'restored', ?, ?, ?)",
                [ds, key, dim, count, version, utcnow()],
            )
            report.missing.append(
                f"{ds}: embeddings key {key!r}: model and patches field not copied"
            )
    runs, orphans = [], []
    for path in sorted((folder / "results").glob("*.parquet")):
        name = path.stem
        key = name.split("__")[0]
        for part in name.split("__"):
            check_name(part, "results table name")
        conn.execute(
            f"CREATE TABLE {qualified('results', f'{ds}__{name}')} AS "
            "SELECT * FROM read_parquet(?)",
            [str(path)],
        )
        if "__" in name:
            continue
        record = records / "runs" / f"{key}.parquet"
        if record.exists():
            conn.execute(
                "INSERT INTO brain_runs BY NAME SELECT * FROM read_parquet(?) "
                "WHERE dataset = ? AND brain_key = ?",
                [str(record), ds, key],
            )
        if _rows(
            conn, "SELECT count(*) FROM brain_runs WHERE dataset = ? AND brain_key = ?", [ds, key]
        ):
            runs.append(key)
        else:
            orphans.append(key)
    if orphans:
        report.missing.append(
            f"{ds}: results of {orphans} restored without a run record (copied before run "
            "records were): re-materialise those brain keys"
        )
    views = []
    for path in sorted((folder / "views").glob("*.parquet")):
        name = path.stem
        check_name(name, "view name")
        table = qualified("views", f"{ds}__{name}")
        conn.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet(?)", [str(path)])
        meta = records / "saved_views" / f"{name}.parquet"
        if meta.exists():
            conn.execute(
                "INSERT INTO saved_views BY NAME SELECT * FROM read_parquet(?)", [str(meta)]
            )
        else:
            n = _rows(conn, f"SELECT count(*) FROM {table}", [])
            conn.execute(
                "INSERT INTO saved_views (dataset, name, n, created_at) VALUES (?, ?, ?, ?)",
                [ds, name, n, utcnow()],
            )
        views.append(name)
    line = (
        f"{ds}: {n_samples} samples, {n_labels} labels, {len(keys)} embeddings keys, "
        f"{len(runs)} brain runs"
        + (f" (+{len(orphans)} results without a record)" if orphans else "")
        + f", {len(views)} saved views"
    )
    report.lines.append(line)
    log(line)


__all__ = [
    "DoctorReport",
    "Finding",
    "RestoreReport",
    "check_copies",
    "check_database",
    "check_indexes",
    "check_locks",
    "check_orphans",
    "doctor",
    "examine",
    "quick_check",
    "repair",
    "restore",
]
