"""Operations: the Kafka broker from the jars, the role registry, in-process and supervised roles, `runstream up`."""
