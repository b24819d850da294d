"""The read API (``runstream.Api``): runs, metric history, comparisons and lineage from Python, over the SQL
endpoint. Its dependencies are the ``[read]`` extra (clickhouse-connect, pandas, pyarrow), imported when used."""

from runstream.read.api import Api

__all__ = ["Api"]
