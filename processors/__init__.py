"""Stream processors (faust-streaming): rollups, fleet view and anomaly detection over the events topic."""
