"""Progress records of a migration: where a resumed copy starts, which rows it leaves out."""

from __future__ import annotations

import json

from pipeline_db.transfer.progress import TableProgress


def record(after: str | None, last: str | None, copied: int = 10) -> tuple[object, ...]:
    return (after, last, copied, 1, 0, 0.5, json.dumps({"timestamp": {"UTC": copied}}))


def test_the_chain_of_committed_ranges_gives_the_resume_point() -> None:
    # Batches (None, 10], (10, 20], (30, 40] committed; (20, 30] did not (two writers).
    records = [record(None, "10"), record("30", "40"), record("10", "20")]

    progress = TableProgress.read("t", None, records, "bigint")

    assert progress.last_key == 20
    assert progress.beyond == ((30, 40),)
    assert (progress.copied, progress.skipped, progress.started) == (30, 3, True)
    assert progress.conversions == {"timestamp": {"UTC": 30}}
    assert [k for k in range(19, 45) if progress.committed(k)] == list(range(31, 41))


def test_text_keys_compare_as_text_and_rowless_batches_count() -> None:
    records = [record(None, None, copied=0), record(None, "ep0002"), record("ep0005", "ep0009")]

    progress = TableProgress.read(
        "t", (True, '["CREATE INDEX x ON t (a)"]', '["ep0005"]'), records, "text"
    )

    assert progress.last_key == "ep0002"
    assert progress.committed("ep0006") and not progress.committed("ep0005")
    assert not progress.committed("ep0010")
    assert progress.done and progress.deferred == ("CREATE INDEX x ON t (a)",)
    assert progress.splits == ("ep0005",)


def test_nothing_committed() -> None:
    progress = TableProgress.read("t", None, [], "text")
    assert progress.last_key is None and not progress.started and not progress.committed("a")


def test_a_key_range_reads_its_own_chain() -> None:
    # The table split at 100: (None, 100] and (100, None] copied at once.
    records = [record(None, "50"), record("100", "150"), record("50", "100"), record("150", "200")]

    first = TableProgress.read("t", None, records, "bigint", upper=100)
    second = TableProgress.read("t", None, records, "bigint", lower=100)

    assert (first.last_key, first.copied) == (100, 20)
    assert (second.last_key, second.copied, second.beyond) == (200, 20, ())
    assert first.merged(second).copied == 40
