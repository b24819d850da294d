"""The pipeline's own metrics (Prometheus). Labels are fixed and low-cardinality: never a run id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from runstream.wire.config import RunstreamConfig

INGEST_REQUESTS = Counter("runstream_ingest_requests_total", "Ingest RPCs by method and gRPC status code.", ["method", "code"])
INGEST_BATCHES = Counter("runstream_ingest_batches_total", "Batches accepted (published and acknowledged by Kafka).")
INGEST_POINTS = Counter("runstream_ingest_points_total", "Metric points accepted.")
INGEST_REJECTED = Counter("runstream_ingest_batches_rejected_total", "Batches refused, by reason.", ["reason"])
INGEST_PRODUCER_REBUILDS = Counter("runstream_ingest_producer_rebuilds_total",
                                   "Kafka producers replaced after a fatal error (e.g. out-of-order sequence).")
INGEST_SESSIONS = Gauge("runstream_ingest_sessions", "Session streams open (one per connected client process).")
INGEST_LOOP_LAG = Gauge("runstream_ingest_loop_lag_seconds",
                        "How late ingest's event loop runs a 50 ms timer (moving average): its CPU saturation.")
INGEST_BUSY_HINT = Gauge("runstream_ingest_busy_flush_hint_ms",
                         "The flush interval a saturated ingest asks of clients with small requests (0: none).")
INGEST_INFLIGHT = Gauge("runstream_ingest_inflight_batches", "Batches published and not yet acknowledged by Kafka.")
INGEST_RECORDS = Counter("runstream_ingest_records_total",
                         "Events records published (the requests flushed together share records, packed per partition).")
INGEST_PUBLISH_SECONDS = Histogram("runstream_ingest_publish_seconds",
                                   "Time from receiving a request to Kafka acknowledging all its batches.",
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

SINK_BATCHES = Counter("runstream_sink_batches_total", "Batches read from Kafka, by outcome.", ["outcome"])
SINK_ROWS = Counter("runstream_sink_rows_total", "Rows inserted into ClickHouse, by table.", ["table"])
SINK_INSERT_SECONDS = Histogram("runstream_sink_insert_seconds", "Time of one ClickHouse insert round (all tables of one poll).",
                                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SINK_DEAD_LETTERS = Counter("runstream_sink_dead_letters_total", "Records the sink could not store, moved to the dead-letter "
                            "topic, by source topic kind.", ["kind"])
SINK_CONSUMING = Gauge("runstream_sink_consuming", "1 while the sink's consume loop runs; 0 when it has died.")
SINK_ERRORS = Counter("runstream_sink_errors_total", "Sink failures, by stage.", ["stage"])
SINK_LAG_SECONDS = Gauge("runstream_sink_event_lag_seconds", "Now minus the client time of the newest batch stored.")
SINK_MEMORY_PURGES = Counter("runstream_sink_memory_purges_total", "Times the embedded engine's freed allocator pages "
                             "were returned to the OS (sink.memory_purge_interval_s).")
SINK_CONSUMER_LAG = Gauge("runstream_sink_consumer_lag_records", "Records in Kafka not yet read by the sink, by topic.", ["topic"])
SQL_QUERIES = Counter("runstream_sql_queries_total", "Read endpoint queries answered: by an engine run of their own "
                      "(ran) or by an identical one in flight (shared).", ["execution"])

MLFLOW_REQUESTS = Counter("runstream_mlflow_requests_total", "MLflow API requests by endpoint and HTTP status.",
                          ["endpoint", "status"])
MLFLOW_SECONDS = Histogram("runstream_mlflow_request_seconds", "MLflow API request time by endpoint.", ["endpoint"],
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
MLFLOW_BATCHES = Counter("runstream_mlflow_batches_total", "Batches the MLflow API published and Kafka acknowledged.")
MLFLOW_POINTS = Counter("runstream_mlflow_points_total", "Metric points the MLflow API published and Kafka acknowledged.")
MLFLOW_READ_WAIT = Histogram("runstream_mlflow_read_wait_seconds", "Time a read waited for the same role's acknowledged "
                             "writes to be stored.", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


PROC_LAG_SECONDS = Gauge("runstream_processor_lag_seconds", "How far the processors read behind ingest (EWMA of now - record timestamp).")
PROC_TICK_RUNS = Gauge("runstream_processor_tick_runs",
                       "Runs the last wall-clock tick looked at (the others have no window or stall due yet).")
PROC_READY = Gauge("runstream_processor_ready",
                   "1 when this worker holds its partitions and has recovered their state; 0 while it rebalances or "
                   "recovers (a readiness probe).")


def serve_metrics(port: int, config: RunstreamConfig) -> None:
    """Expose /metrics on ``port`` (0 disables) at ``metrics_host``; HTTPS with required client certificates when
    the config names them (the config refuses a host beyond loopback without them)."""
    if port:
        start_http_server(port, addr=config.metrics_host, certfile=config.metrics_tls_cert or None,
                          keyfile=config.metrics_tls_key or None, client_cafile=config.metrics_tls_client_ca or None,
                          client_auth_required=bool(config.metrics_tls_client_ca))

PROC_BATCHES = Counter("runstream_processor_batches_total", "Event batches seen by the processors, by outcome.", ["outcome"])
PROC_POINTS = Counter("runstream_processor_points_total", "Metric points processed.")
PROC_STATES_AT_REBALANCE = Counter("runstream_processor_states_at_rebalance_total",
                                   "Run and fleet states still unwritten when a rebalance's recovery began (written then).")
PROC_LATE = Counter("runstream_processor_late_points_total",
                    "Points behind a closed window (rollups), or older than the hour of closed windows the fleet keeps.",
                    ["view"])
PROC_EMITTED = Counter("runstream_processor_windows_emitted_total", "Rollup and fleet windows emitted.", ["view"])
PROC_ALERTS = Counter("runstream_processor_alerts_total", "Alerts opened and resolved, by kind.", ["kind", "status"])
PROC_WEBHOOK = Counter("runstream_processor_webhook_posts_total", "Webhook deliveries, by outcome.", ["outcome"])
