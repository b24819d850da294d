#!/bin/sh
# The roles' SCRAM credentials in the broker's metadata, set as the admin (PLAIN over TLS). Idempotent: setting a
# user's credential again replaces it with the same password.
set -eu
umask 077
props=$(mktemp)
trap 'rm -f "$props"' EXIT
cat > "$props" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$(cat /run/secrets/kafka_admin)";
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.pem
PROPS
for role in ingest process sink; do
  /opt/kafka/bin/kafka-configs.sh --bootstrap-server kafka:9092 --command-config "$props" --alter \
    --entity-type users --entity-name "$role" \
    --add-config "SCRAM-SHA-256=[password=$(cat /run/secrets/kafka_$role)]"
done
echo "SCRAM credentials set for ingest, process, sink"
