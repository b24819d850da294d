"""The gRPC ingest role: validate, authenticate, publish to Kafka. It never writes storage."""

from runstream.ingest.server import IngestServer, stages

__all__ = ["IngestServer", "stages"]
