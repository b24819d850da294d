"""ClickHouse storage: schema and migrations, the sink (the only writer), queries, and the SQL endpoint."""
