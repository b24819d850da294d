"""The mlflow role: MLflow's tracking REST API, its artifact proxy, its model registry and its web UI on runstream.
Writes become ingest's batches (validated and published as ingest publishes them); reads are SQL over the stored
views; the registry is governance state on the control topic."""

from runstream.mlflow.api import MlflowServer, stages

__all__ = ["MlflowServer", "stages"]
