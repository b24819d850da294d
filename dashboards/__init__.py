"""Grafana dashboards as code (grafana-foundation-sdk), provisioning files, and `runstream dashboards push`."""
