"""The wire layer: what every part shares and nothing else. Protobuf messages (runstream.v1), the Kafka
record encoding and topic registry, the typed config, the exception tree and the audit chaining rule.
Pure Python plus protobuf and PyYAML: the slim SDK install carries it."""
