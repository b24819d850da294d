"""The sink's writer on the embedded engine: a batch delivered twice into one poll (Kafka's at-least-once) is read
once, through the views and the latest values kept beside them."""

from __future__ import annotations

import uuid
from pathlib import Path

from runstream.storage import columns
from runstream.storage.governance import GovernanceApplier
from runstream.storage.store import migrate, open_embedded
from runstream.storage.writer import Writer
from tests.helpers import metric_batch


def test_a_batch_twice_in_one_poll_is_read_once(chdb_path: Path) -> None:
    client = open_embedded(chdb_path)
    db = f"w_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {db}")
    try:
        migrate(client, db)
        client.command(f"SYSTEM STOP MERGES {db}.metric_points")  # no merge collapses the copy for the views
        b = metric_batch("twice", 500, values=[float(i) for i in range(500)])
        Writer(client, db, GovernanceApplier(client, db)).write(columns.build([(b, 0, 7), (b, 0, 8)]))
        assert client.command(f"SELECT count() FROM {db}.batches FINAL") == 1
        assert client.query(f"SELECT count(), sum(value) FROM {db}.metrics").result_rows == [(500, sum(range(500)))]
        assert client.query(f"SELECT step, value FROM {db}.latest").result_rows == [(499, 499.0)]
    finally:
        client.command(f"DROP DATABASE {db}")
