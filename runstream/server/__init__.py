"""What the server roles share and training jobs never import: Kafka plumbing, governance I/O, metrics."""
