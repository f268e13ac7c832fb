"""``--on-error``: what happens to a row with a value the target cannot take.

A :class:`RowConverter` converts a batch column by column at C speed
(:mod:`.columns`) when nothing in it looks wrong; otherwise it decodes each
row value by value (:mod:`.convert`) and looks at what the source query
flagged (a missing parent row, a failing CHECK) and at rows that repeat a
unique value. A row with problems is then, by policy:

* ``abort`` (the default): the migration stops, naming table, key, column, reason;
* ``skip``: left out;
* ``repair``: written with its safe fixes (NUL characters stripped, NaN and
  Infinity to null) when every problem has one; otherwise, and for orphans
  (which "repair" leaves out), left out.

Every row left out or repaired becomes an :class:`~pipeline_db.transfer.progress.Issue`.
Each converted batch carries the hash sum of its rows (the source side of
the verification); in digest mode the converter computes only that, for a
verification that reads the source again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, tzinfo
from typing import Any

from pipeline_db.transfer.columns import canonical_column, column_decoder, column_encoder
from pipeline_db.transfer.convert import Dialect, Problem, decoder
from pipeline_db.transfer.errors import RowRejectedError
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.progress import Issue
from pipeline_db.transfer.target import Batch, OnError

_MASK = (1 << 64) - 1
Row = tuple[Any, ...]
Columns = list[Sequence[Any]]


def digest_of(canonical: Columns) -> tuple[int, int]:
    """The row count and the sum of the rows' hashes (order-independent, one process)."""
    if not canonical or not canonical[0]:
        return 0, 0
    return len(canonical[0]), sum(map(hash, zip(*canonical, strict=True))) & _MASK


class RowConverter:
    """Converts a table's source rows for the target, applying the error policy."""

    def __init__(
        self,
        plan: TablePlan,
        *,
        source: Dialect,
        target: Dialect,
        on_error: OnError,
        zone: tzinfo,
        flagged: bool,
        duplicates: dict[Any, str] | None = None,
        skipped: dict[str, set[str]] | None = None,
        after: Any = None,
        committed: Callable[[Any], bool] | None = None,
    ) -> None:
        """Prepare the table's decoders.

        Args:
            plan: the table.
            source: the dialect rows come from.
            target: the dialect they go to.
            on_error: abort, skip or repair.
            zone: the time zone of naive local timestamps.
            flagged: whether rows carry orphan and CHECK flags after their columns.
            duplicates: keys of rows repeating a unique value, with why.
            skipped: keys of rows left out so far, by table (their children are orphans;
                rows of this table among them are left out again).
            after: the key the first batch reads after (batches record their ranges).
            committed: tells keys of rows an interrupted run wrote already (left out).
        """
        self.plan = plan
        self.on_error = on_error
        self.counts: dict[str, Counter[str]] = {c.name: Counter() for c in plan.columns}
        self._decoders = [
            decoder(
                c.kind,
                source=source,
                target=target,
                nullable=c.nullable,
                zone=zone,
                counts=self.counts[c.name],
            )
            for c in plan.columns
        ]
        self._column_decoders = [
            column_decoder(
                c.kind,
                source=source,
                target=target,
                nullable=c.nullable,
                zone=zone,
                counts=self.counts[c.name],
            )
            for c in plan.columns
        ]
        self._encoders = [column_encoder(c.kind, target) for c in plan.columns]
        self._kinds = [c.kind for c in plan.columns]
        self._rows_hash_as_is = not any(self._encoders) and "json" not in self._kinds
        self._width = len(plan.columns)
        self._key = plan.key_index
        self._flagged = flagged and bool(plan.parents or plan.checks)
        self._duplicates = duplicates or {}
        self._skipped = skipped if skipped is not None else {}
        names = plan.names
        self._links = [(names.index(link.column), link) for link in plan.parents]
        self._after = after
        self._committed = committed

    def __call__(self, rows: list[Row]) -> Batch:
        """Convert a batch of source rows into a :class:`Batch` for the target.

        The batch also carries the digest of what it should put in the target
        (the source side of the verification).
        """
        last_key = rows[-1][self._key] if rows else None
        batch = Batch(rows=[], last_key=last_key, after_key=self._after, read=len(rows))
        self._after = last_key
        if self._committed is not None:
            committed, key = self._committed, self._key
            rows = [row for row in rows if not committed(row[key])]
        typed, canonical = self._convert(rows, batch)
        if typed and typed[0]:
            encoded = [e(c) if e else c for e, c in zip(self._encoders, typed, strict=True)]
            batch.rows = list(zip(*encoded, strict=True))
            if self._rows_hash_as_is:  # the rows are the typed values: hash them directly
                batch.digest = len(batch.rows), sum(map(hash, batch.rows)) & _MASK
            else:
                batch.digest = digest_of(canonical)
        batch.conversions = self._take_counts()
        return batch

    def digest(self, rows: list[Row]) -> tuple[int, int]:
        """The count and hash sum of the rows that should be in the target (verification)."""
        batch = Batch(rows=[], last_key=None)
        _, canonical = self._convert(rows, batch)
        self._take_counts()
        # Rows left out leave their children out too (verified in foreign-key order).
        left_out = {i.key for i in batch.issues if i.action == "skipped" and i.key is not None}
        if left_out:
            self._skipped.setdefault(self.plan.name, set()).update(left_out)
        return digest_of(canonical)

    def null_keys(self, rowids: list[int]) -> Batch:
        """The batch of issues for rows whose key is NULL (never copied)."""
        batch = Batch(rows=[], last_key=None)
        for rowid in rowids:
            self._reject(f"rowid {rowid}", [(self.plan.key, Problem("NULL primary key"))], batch)
        return batch

    # -- columns ---------------------------------------------------------------------

    def _convert(self, rows: list[Row], batch: Batch) -> tuple[Columns, Columns]:
        """Typed and canonical columns of the rows kept: column-wise, else row by row."""
        if not rows:
            return [], []
        columns = list(zip(*rows, strict=True))
        if not self._suspect_batch(columns):
            saved = {name: Counter(c) for name, c in self.counts.items()}
            fast = self._fast(columns)
            if fast is not None:
                return fast
            for name, counts in self.counts.items():  # the row-wise pass counts again
                counts.clear()
                counts.update(saved[name])
        kept = self._typed(rows, batch)
        if not kept:
            return [], []
        typed: Columns = [list(c) for c in zip(*kept, strict=True)]
        canonical = [canonical_column(k, c) for k, c in zip(self._kinds, typed, strict=True)]
        return typed, canonical

    def _fast(self, columns: list[tuple[Any, ...]]) -> tuple[Columns, Columns] | None:
        typed: Columns = []
        for decode, values in zip(self._column_decoders, columns, strict=False):
            converted = decode(values)
            if converted is None:
                return None
            typed.append(converted)
        try:  # parsing JSON for the hash also tells valid JSON from the rest
            canonical = [canonical_column(k, c) for k, c in zip(self._kinds, typed, strict=True)]
        except (ValueError, RecursionError):
            return None
        return typed, canonical

    def _suspect_batch(self, columns: list[tuple[Any, ...]]) -> bool:
        """Whether any row of the batch may be an orphan, fail a CHECK or repeat a key."""
        if self._flagged and any(any(flags) for flags in columns[self._width :]):
            return True
        keys = columns[self._key]
        if self._duplicates and not self._duplicates.keys().isdisjoint(keys):
            return True
        mine = self._skipped.get(self.plan.name)
        if mine and not mine.isdisjoint(map(str, keys)):
            return True
        for index, link in self._links:
            parents = self._skipped.get(link.parent)
            if parents and not parents.isdisjoint(map(str, filter(None, columns[index]))):
                return True
        return False

    # -- rows -----------------------------------------------------------------------

    def _typed(self, rows: list[Row], batch: Batch) -> list[list[Any]]:
        decoders = self._decoders
        width = self._width
        suspect = self._suspect
        typed: list[list[Any]] = []
        for row in rows:
            values: list[Any] = []
            append = values.append
            try:
                for decode, value in zip(decoders, row, strict=False):  # flags follow
                    append(decode(value))
            except Problem:
                pass
            if len(values) == width and not suspect(row):
                typed.append(values)
                continue
            checked = self._examine(row, values, batch)
            if checked is not None:
                typed.append(checked)
        return typed

    def _suspect(self, row: Row) -> bool:
        if self._flagged and any(row[self._width :]):
            return True
        if self._duplicates and row[self._key] in self._duplicates:
            return True
        if self._skipped:
            if str(row[self._key]) in self._skipped.get(self.plan.name, ()):
                return True
            for index, link in self._links:
                parents = self._skipped.get(link.parent)
                if parents and row[index] is not None and str(row[index]) in parents:
                    return True
        return False

    def _examine(self, row: Row, decoded: list[Any], batch: Batch) -> list[Any] | None:
        """Find every problem of a row, then apply the policy; None: the row is left out."""
        key = row[self._key]
        problems: list[tuple[str, Problem]] = []
        values = list(decoded)
        for column, decode, value in zip(
            self.plan.columns[len(decoded) :],
            self._decoders[len(decoded) :],
            row[len(decoded) : self._width],
            strict=True,
        ):
            try:
                values.append(decode(value))
            except Problem as problem:
                problems.append((column.name, problem))
                values.append(problem.fix if problem.fixable else None)
        if str(key) in self._skipped.get(self.plan.name, ()):
            return None  # left out by an earlier run (the target refused it)
        leave_out = self._orphans_and_rules(row, problems)
        if not problems:
            return values
        if self.on_error == "repair" and not leave_out and all(p.fixable for _, p in problems):
            batch.repaired.add(key)
            batch.issues.extend(
                Issue(self.plan.name, str(key), column, problem.reason, "repaired")
                for column, problem in problems
            )
            return values
        self._reject(key, problems, batch)
        return None

    def _orphans_and_rules(self, row: Row, problems: list[tuple[str, Problem]]) -> bool:
        """Add orphan, CHECK and duplicate problems; True if the row must be left out."""
        leave_out = False
        flags = row[self._width :] if self._flagged else ()
        for position, (index, link) in enumerate(self._links):
            value = row[index]
            missing = bool(flags[position]) if flags else False
            refused = (
                str(value) in self._skipped.get(link.parent, ()) if value is not None else False
            )
            if missing or refused:
                why = "does not exist" if missing else "was left out"
                problems.append(
                    (link.column, Problem(f"orphan: its {link.parent} row {value} {why}"))
                )
                leave_out = True
        for position, check in enumerate(self.plan.checks, start=len(self._links)):
            if flags and flags[position]:
                column = check.columns[0] if check.columns else None
                problems.append((column or "", Problem(f"fails {check.name}: {check.sql}")))
        reason = self._duplicates.get(row[self._key])
        if reason is not None:
            problems.append((self._unique_column(reason), Problem(reason)))
        return leave_out

    def _unique_column(self, reason: str) -> str:
        for columns in self.plan.uniques:
            if f"({', '.join(columns)})" in reason:
                return columns[0]
        return self.plan.key

    def _reject(self, key: Any, problems: list[tuple[str, Problem]], batch: Batch) -> None:
        if self.on_error == "abort":
            column, problem = problems[0]
            raise RowRejectedError(self.plan.name, key, column or None, problem.reason)
        batch.skipped += 1
        for column, problem in problems:
            reason = problem.reason
            if self.on_error == "repair" and not reason.startswith("orphan"):
                reason += "" if problem.fixable else " (no safe repair)"
            elif self.on_error == "repair" and not reason.endswith("left out"):
                reason += " (left out)"
            batch.issues.append(Issue(self.plan.name, str(key), column or None, reason, "skipped"))

    def _take_counts(self) -> dict[str, Counter[str]]:
        taken = {name: Counter(c) for name, c in self.counts.items() if c}
        for counts in self.counts.values():
            counts.clear()
        return taken


Digester = Callable[[list[Row]], tuple[int, int]]


def target_digester(plan: TablePlan, dialect: Dialect) -> Digester:
    """The digest of rows as the target stores them (the other side of the verification)."""
    kinds = [c.kind for c in plan.columns]
    fast = [
        column_decoder(k, source=dialect, target=dialect, nullable=True, zone=UTC, counts=Counter())
        for k in kinds
    ]
    slow = [decoder(k, source=dialect, target=dialect, nullable=True) for k in kinds]
    # asyncpg hands typed values (a Record hashes as the tuple of its values).
    as_is = dialect == "postgresql" and "json" not in kinds

    def digest(rows: list[Row]) -> tuple[int, int]:
        if not rows:
            return 0, 0
        if as_is:
            return len(rows), sum(map(hash, rows)) & _MASK
        typed: Columns = []
        for decode, one, values in zip(fast, slow, zip(*rows, strict=True), strict=True):
            converted = decode(values)
            typed.append(converted if converted is not None else [_lenient(one, v) for v in values])
        return digest_of([canonical_column(k, c) for k, c in zip(kinds, typed, strict=True)])

    return digest


def _lenient(decode: Callable[[Any], Any], value: Any) -> Any:
    """A stored value decoded, or kept as it is when it cannot be (it will differ)."""
    try:
        return decode(value)
    except Problem:
        return value
