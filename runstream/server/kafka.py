"""Kafka plumbing shared by the server roles: how a process signs in (SASL/TLS from kafka.*), topic creation
from the registry (runstream.wire.topics) and the ACLs that give each role's principal its topics only."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidReplicationFactorError,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnsupportedVersionError,
    for_code,
)
from aiokafka.protocol.admin import CreateAclsRequest

from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import ConfigError, Unavailable
from runstream.wire.topics import TOPICS

# Errors after which an idempotent producer cannot go on (its sequence numbers or id no longer match the broker's,
# e.g. after a broker restart lost the tail of a partition): only a new producer, with a new id, can.
FATAL_PRODUCER_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, InvalidProducerIdMapping,
                         ProducerFenced)

# The broker's answers that waiting will not change.
REFUSED = (AuthenticationFailedError, SaslAuthenticationFailed, TopicAuthorizationFailedError,
           ClusterAuthorizationFailedError)

# The principal each role signs in as on a secured embedded broker (the role's name).
ROLE_PRINCIPALS = ("ingest", "process", "sink")


def client_args(config: RunstreamConfig) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client this process makes: bootstrap plus how to sign in."""
    k = config.kafka
    args: dict[str, Any] = {"bootstrap_servers": k.bootstrap, "security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        args["ssl_context"] = ssl.create_default_context(cafile=k.ssl_ca or None)
    if k.security_protocol.startswith("SASL"):
        args.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.username,
                    sasl_plain_password=read_password(config))
    return args


def read_password(config: RunstreamConfig) -> str:
    path = Path(config.kafka.password_file).expanduser()
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"CONFIG ERROR: kafka.password_file: cannot read {path} ({exc.strerror}); it holds the "
                          f"password of Kafka principal {config.kafka.username!r}") from exc


def as_principal(config: RunstreamConfig, principal: str) -> RunstreamConfig:
    """The config a role runs with: signed in as its own principal when the embedded broker's credentials are
    known, and without the other principals' credentials. Unchanged otherwise."""
    if not config.kafka.credentials_dir:
        return config
    kafka = dataclasses.replace(config.kafka, username=principal, credentials_dir="",
                                password_file=str(Path(config.kafka.credentials_dir) / f"{principal}.password"))
    return dataclasses.replace(config, kafka=kafka)


# Kafka's ACL enums (org.apache.kafka.common.acl / resource), as sent on the wire.
TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID = 2, 3, 4, 5
LITERAL, PREFIXED = 3, 4
READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS, ALL = 3, 4, 5, 8, 10, 2
ALLOW = 3


@dataclass(frozen=True)
class Acl:
    principal: str
    resource_type: int
    name: str
    operation: int
    pattern: int = LITERAL


def role_acls(config: RunstreamConfig) -> list[Acl]:
    """What each role may do, and nothing more: ingest writes events, control and audit and reads control (token
    changes); the processors read events and write their outputs (faust's own topics, group and transactions
    under the app id); the sink reads every stored topic and writes the dead-letter topic."""
    k, app = config.kafka, config.processors.app_id
    acls: list[Acl] = []

    def topic(principal: str, name: str, *ops: int) -> None:
        acls.extend(Acl(principal, TOPIC, name, op) for op in (*ops, DESCRIBE))

    for name in (k.events_topic, k.control_topic, k.audit_topic):
        topic("ingest", name, WRITE)
    topic("ingest", k.control_topic, READ)
    topic("process", k.events_topic, READ)
    for name in (k.rollups_topic, k.alerts_topic, k.fleet_topic):
        topic("process", name, WRITE)
    acls += [Acl("process", TOPIC, app, ALL, PREFIXED), Acl("process", GROUP, app, ALL, PREFIXED),
             Acl("process", TRANSACTIONAL_ID, app, ALL, PREFIXED), Acl("process", CLUSTER, "kafka-cluster", DESCRIBE_CONFIGS)]
    for t in TOPICS:
        if t.stored:
            topic("sink", t.name(config), READ)
    topic("sink", k.deadletter_topic, WRITE)
    acls.append(Acl("sink", GROUP, config.sink.group_id, READ))
    return acls


class _CreateAcls(CreateAclsRequest):  # type: ignore[misc]
    """CreateAcls with every binding in one request: the broker commits them together (one request per binding
    cost ~30 ms each on a KRaft broker, about a second for a stack's ACLs)."""

    def __init__(self, acls: list[Acl]) -> None:
        self._acls = acls

    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class.API_VERSION < 1:
            raise UnsupportedVersionError("CreateAcls v1 (pattern types) is needed: Kafka 2.0 or later")
        return request_struct_class([(a.resource_type, a.name, a.pattern, f"User:{a.principal}", "*", a.operation, ALLOW)
                                     for a in self._acls])


async def grant(admin: AIOKafkaAdminClient, acls: list[Acl]) -> None:
    """Create the ACLs (idempotent: an existing binding is left as it is)."""
    if not acls:
        return
    resp = await admin._send_request(_CreateAcls(acls))  # aiokafka has the request but no public call for it
    for acl, (code, message) in zip(acls, resp.creation_responses, strict=True):
        if code:
            raise for_code(code)(f"creating ACL {acl}: {message}")


def needed_topics(config: RunstreamConfig) -> list[str]:
    """The topics this process works with: every one, or on a secured broker only a role principal's own (it may
    not even see the others)."""
    k = config.kafka
    if k.security_protocol.startswith("SASL") and k.username in ROLE_PRINCIPALS:
        return sorted({a.name for a in role_acls(config) if a.principal == k.username and a.resource_type == TOPIC
                       and a.pattern == LITERAL})
    return [t.name(config) for t in TOPICS]


async def ensure_topics(config: RunstreamConfig, timeout: float = 60.0, *, acls: bool = False) -> None:
    """Create the missing topics this process needs (idempotent) and, with ``acls``, grant every role's ACLs;
    waits for the broker up to ``timeout``. Refusals (credentials, permissions) are reported at once. A
    replication factor of 0 in the config becomes min(3, brokers) here, for this process (faust reads it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    wanted = set(needed_topics(config))
    while True:
        admin = AIOKafkaAdminClient(**client_args(config), request_timeout_ms=10_000)
        try:
            await admin.start()
            k = config.kafka
            if k.replication_factor <= 0:
                k.replication_factor = min(3, len((await admin.describe_cluster())["brokers"]) or 1)
            insync = k.min_insync_replicas if k.min_insync_replicas > 0 else min(2, k.replication_factor)
            if acls:
                # ACLs before topics: the broker applies metadata in order, so once the topics are visible, so are
                # the grants (a role starting right after must not find its topic missing and try to create it).
                await grant(admin, role_acls(config))
            existing = set(await admin.list_topics())
            missing = [NewTopic(t.name(config), t.partitions(config), k.replication_factor,
                                topic_configs={"min.insync.replicas": str(insync),
                                               **({"retention.ms": "-1"} if t.keep_forever else {})})
                       for t in TOPICS if t.name(config) in wanted and t.name(config) not in existing]
            if missing:
                try:
                    resp = await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    resp = None
                for topic_error in getattr(resp, "topic_errors", None) or ():  # the answer per topic, not raised
                    name, code = topic_error[0], topic_error[1]
                    if code and code != TopicAlreadyExistsError.errno:
                        raise for_code(code)(f"creating topic {name}: {topic_error[2] if len(topic_error) > 2 else ''}")
                # Created means committed by the controller; wait until the broker's metadata shows them.
                while not wanted <= set(await admin.list_topics()):
                    if asyncio.get_running_loop().time() > deadline:
                        raise Unavailable(f"Kafka at {config.kafka.bootstrap} created topics it does not list yet")
                    await asyncio.sleep(0.05)
            return
        except InvalidReplicationFactorError as exc:
            raise ConfigError(f"CONFIG ERROR: kafka.replication_factor: {config.kafka.replication_factor} is more than "
                              f"the brokers of {config.kafka.bootstrap} ({exc}); lower it, or 0 for min(3, brokers)") from exc
        except REFUSED as exc:
            who = f"principal {config.kafka.username!r}" if config.kafka.username else "this unauthenticated client"
            raise Unavailable(f"Kafka at {config.kafka.bootstrap} refused {who} ({exc}). Check kafka.username / "
                              "kafka.password_file, and that `runstream kafka setup` (as an admin) made the topics "
                              "and ACLs.") from exc
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"Kafka at {config.kafka.bootstrap} is not reachable ({exc}). Start it (runstream up) "
                                  "or set kafka.bootstrap / RUNSTREAM_KAFKA_BOOTSTRAP.") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
