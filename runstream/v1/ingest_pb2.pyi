from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_FINISHED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_KILLED: _ClassVar[RunStatus]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_FINISHED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_KILLED: RunStatus

class Batch(_message.Message):
    __slots__ = ("batch_id", "project", "run_id", "seq", "created_ms", "run_start", "run_finish", "params", "tags", "metrics", "dataset", "artifact", "run_resume")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_START_FIELD_NUMBER: _ClassVar[int]
    RUN_FINISH_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    RUN_RESUME_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    project: str
    run_id: str
    seq: int
    created_ms: int
    run_start: RunStart
    run_finish: RunFinish
    params: Params
    tags: Tags
    metrics: Metrics
    dataset: DatasetUse
    artifact: Artifact
    run_resume: RunResume
    def __init__(self, batch_id: _Optional[str] = ..., project: _Optional[str] = ..., run_id: _Optional[str] = ..., seq: _Optional[int] = ..., created_ms: _Optional[int] = ..., run_start: _Optional[_Union[RunStart, _Mapping]] = ..., run_finish: _Optional[_Union[RunFinish, _Mapping]] = ..., params: _Optional[_Union[Params, _Mapping]] = ..., tags: _Optional[_Union[Tags, _Mapping]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., dataset: _Optional[_Union[DatasetUse, _Mapping]] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ..., run_resume: _Optional[_Union[RunResume, _Mapping]] = ...) -> None: ...

class DatasetUse(_message.Message):
    __slots__ = ("uri", "digest", "size", "name", "source_type", "source", "schema", "profile", "input_tags")
    class InputTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    URI_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    INPUT_TAGS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    digest: str
    size: int
    name: str
    source_type: str
    source: str
    schema: str
    profile: str
    input_tags: _containers.ScalarMap[str, str]
    def __init__(self, uri: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., name: _Optional[str] = ..., source_type: _Optional[str] = ..., source: _Optional[str] = ..., schema: _Optional[str] = ..., profile: _Optional[str] = ..., input_tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("uri", "stored_uri", "size", "sha256", "step")
    URI_FIELD_NUMBER: _ClassVar[int]
    STORED_URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    uri: str
    stored_uri: str
    size: int
    sha256: str
    step: int
    def __init__(self, uri: _Optional[str] = ..., stored_uri: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("names", "name_index", "steps", "timestamps_ms", "values")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    NAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    name_index: _containers.RepeatedScalarFieldContainer[int]
    steps: _containers.RepeatedScalarFieldContainer[int]
    timestamps_ms: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, names: _Optional[_Iterable[str]] = ..., name_index: _Optional[_Iterable[int]] = ..., steps: _Optional[_Iterable[int]] = ..., timestamps_ms: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class GitInfo(_message.Message):
    __slots__ = ("commit", "branch", "remote", "dirty", "diff_sha256")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    DIRTY_FIELD_NUMBER: _ClassVar[int]
    DIFF_SHA256_FIELD_NUMBER: _ClassVar[int]
    commit: str
    branch: str
    remote: str
    dirty: bool
    diff_sha256: str
    def __init__(self, commit: _Optional[str] = ..., branch: _Optional[str] = ..., remote: _Optional[str] = ..., dirty: _Optional[bool] = ..., diff_sha256: _Optional[str] = ...) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("hostname", "pid", "python_version", "platform", "packages_sha256")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_SHA256_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    pid: int
    python_version: str
    platform: str
    packages_sha256: str
    def __init__(self, hostname: _Optional[str] = ..., pid: _Optional[int] = ..., python_version: _Optional[str] = ..., platform: _Optional[str] = ..., packages_sha256: _Optional[str] = ...) -> None: ...

class RunStart(_message.Message):
    __slots__ = ("name", "start_ms", "config", "tags", "git", "host", "parent_run_id", "fork_step")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    GIT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FORK_STEP_FIELD_NUMBER: _ClassVar[int]
    name: str
    start_ms: int
    config: _containers.ScalarMap[str, str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    git: GitInfo
    host: HostInfo
    parent_run_id: str
    fork_step: int
    def __init__(self, name: _Optional[str] = ..., start_ms: _Optional[int] = ..., config: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Iterable[str]] = ..., git: _Optional[_Union[GitInfo, _Mapping]] = ..., host: _Optional[_Union[HostInfo, _Mapping]] = ..., parent_run_id: _Optional[str] = ..., fork_step: _Optional[int] = ...) -> None: ...

class RunFinish(_message.Message):
    __slots__ = ("status", "end_ms", "points_acked", "batches_acked", "points_dropped", "session", "session_start_ms")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    POINTS_ACKED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_ACKED_FIELD_NUMBER: _ClassVar[int]
    POINTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_START_MS_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    end_ms: int
    points_acked: int
    batches_acked: int
    points_dropped: int
    session: str
    session_start_ms: int
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., end_ms: _Optional[int] = ..., points_acked: _Optional[int] = ..., batches_acked: _Optional[int] = ..., points_dropped: _Optional[int] = ..., session: _Optional[str] = ..., session_start_ms: _Optional[int] = ...) -> None: ...

class RunResume(_message.Message):
    __slots__ = ("session", "resume_ms", "host")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RESUME_MS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    session: str
    resume_ms: int
    host: HostInfo
    def __init__(self, session: _Optional[str] = ..., resume_ms: _Optional[int] = ..., host: _Optional[_Union[HostInfo, _Mapping]] = ...) -> None: ...

class Params(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Tags(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    def __init__(self, batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ...) -> None: ...

class BatchPack(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, batches: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("id", "batches")
    ID_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    id: int
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    def __init__(self, id: _Optional[int] = ..., batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ...) -> None: ...

class SessionAck(_message.Message):
    __slots__ = ("id", "accepted", "min_flush_interval_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MIN_FLUSH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    accepted: int
    min_flush_interval_ms: int
    def __init__(self, id: _Optional[int] = ..., accepted: _Optional[int] = ..., min_flush_interval_ms: _Optional[int] = ...) -> None: ...

class RollupWindow(_message.Message):
    __slots__ = ("project", "run_id", "metric", "resolution_s", "window_start_ms", "count", "nonfinite", "min", "max", "sum", "first", "first_step", "last", "last_step", "version")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_S_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NONFINITE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    project: str
    run_id: str
    metric: str
    resolution_s: int
    window_start_ms: int
    count: int
    nonfinite: int
    min: float
    max: float
    sum: float
    first: float
    first_step: int
    last: float
    last_step: int
    version: int
    def __init__(self, project: _Optional[str] = ..., run_id: _Optional[str] = ..., metric: _Optional[str] = ..., resolution_s: _Optional[int] = ..., window_start_ms: _Optional[int] = ..., count: _Optional[int] = ..., nonfinite: _Optional[int] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., sum: _Optional[float] = ..., first: _Optional[float] = ..., first_step: _Optional[int] = ..., last: _Optional[float] = ..., last_step: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class Rollups(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[RollupWindow]
    def __init__(self, windows: _Optional[_Iterable[_Union[RollupWindow, _Mapping]]] = ...) -> None: ...

class FleetWindow(_message.Message):
    __slots__ = ("project", "window_start_ms", "partition", "active_runs", "points", "runs_started", "runs_finished", "runs_failed", "version")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUNS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    RUNS_STARTED_FIELD_NUMBER: _ClassVar[int]
    RUNS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RUNS_FAILED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    project: str
    window_start_ms: int
    partition: int
    active_runs: int
    points: int
    runs_started: int
    runs_finished: int
    runs_failed: int
    version: int
    def __init__(self, project: _Optional[str] = ..., window_start_ms: _Optional[int] = ..., partition: _Optional[int] = ..., active_runs: _Optional[int] = ..., points: _Optional[int] = ..., runs_started: _Optional[int] = ..., runs_finished: _Optional[int] = ..., runs_failed: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class FleetWindows(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[FleetWindow]
    def __init__(self, windows: _Optional[_Iterable[_Union[FleetWindow, _Mapping]]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "project", "run_id", "metric", "kind", "severity", "step", "value", "expected_low", "expected_high", "event_ms", "detected_ms", "resolved_ms", "status", "message")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LOW_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_HIGH_FIELD_NUMBER: _ClassVar[int]
    EVENT_MS_FIELD_NUMBER: _ClassVar[int]
    DETECTED_MS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    project: str
    run_id: str
    metric: str
    kind: str
    severity: str
    step: int
    value: float
    expected_low: float
    expected_high: float
    event_ms: int
    detected_ms: int
    resolved_ms: int
    status: str
    message: str
    def __init__(self, alert_id: _Optional[str] = ..., project: _Optional[str] = ..., run_id: _Optional[str] = ..., metric: _Optional[str] = ..., kind: _Optional[str] = ..., severity: _Optional[str] = ..., step: _Optional[int] = ..., value: _Optional[float] = ..., expected_low: _Optional[float] = ..., expected_high: _Optional[float] = ..., event_ms: _Optional[int] = ..., detected_ms: _Optional[int] = ..., resolved_ms: _Optional[int] = ..., status: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ProjectRecord(_message.Message):
    __slots__ = ("name", "description", "tags", "deleted", "title", "artifact_location")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tags: _containers.ScalarMap[str, str]
    deleted: bool
    title: str
    artifact_location: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., deleted: _Optional[bool] = ..., title: _Optional[str] = ..., artifact_location: _Optional[str] = ...) -> None: ...

class TokenRecord(_message.Message):
    __slots__ = ("token_id", "name", "projects", "scopes", "sha256", "created_ms", "expires_ms", "revoked", "revoked_ms")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_MS_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    name: str
    projects: _containers.RepeatedScalarFieldContainer[str]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    sha256: str
    created_ms: int
    expires_ms: int
    revoked: bool
    revoked_ms: int
    def __init__(self, token_id: _Optional[str] = ..., name: _Optional[str] = ..., projects: _Optional[_Iterable[str]] = ..., scopes: _Optional[_Iterable[str]] = ..., sha256: _Optional[str] = ..., created_ms: _Optional[int] = ..., expires_ms: _Optional[int] = ..., revoked: _Optional[bool] = ..., revoked_ms: _Optional[int] = ...) -> None: ...

class ControlEvent(_message.Message):
    __slots__ = ("actor", "at_ms", "action", "project", "token", "run_delete", "retention", "registered_model", "model_version")
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RUN_DELETE_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    actor: str
    at_ms: int
    action: str
    project: ProjectRecord
    token: TokenRecord
    run_delete: RunDeletion
    retention: RetentionPolicy
    registered_model: RegisteredModelRecord
    model_version: ModelVersionRecord
    def __init__(self, actor: _Optional[str] = ..., at_ms: _Optional[int] = ..., action: _Optional[str] = ..., project: _Optional[_Union[ProjectRecord, _Mapping]] = ..., token: _Optional[_Union[TokenRecord, _Mapping]] = ..., run_delete: _Optional[_Union[RunDeletion, _Mapping]] = ..., retention: _Optional[_Union[RetentionPolicy, _Mapping]] = ..., registered_model: _Optional[_Union[RegisteredModelRecord, _Mapping]] = ..., model_version: _Optional[_Union[ModelVersionRecord, _Mapping]] = ...) -> None: ...

class RegisteredModelRecord(_message.Message):
    __slots__ = ("model_key", "name", "project", "description", "tags", "aliases", "created_ms", "updated_ms", "deleted", "user_id")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    model_key: str
    name: str
    project: str
    description: str
    tags: _containers.ScalarMap[str, str]
    aliases: _containers.ScalarMap[str, int]
    created_ms: int
    updated_ms: int
    deleted: bool
    user_id: str
    def __init__(self, model_key: _Optional[str] = ..., name: _Optional[str] = ..., project: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., aliases: _Optional[_Mapping[str, int]] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., deleted: _Optional[bool] = ..., user_id: _Optional[str] = ...) -> None: ...

class ModelVersionRecord(_message.Message):
    __slots__ = ("model_key", "project", "version", "source", "storage_location", "run_id", "run_project", "run_link", "model_id", "description", "tags", "stage", "created_ms", "updated_ms", "deleted", "user_id")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_LOCATION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_PROJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_LINK_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    model_key: str
    project: str
    version: int
    source: str
    storage_location: str
    run_id: str
    run_project: str
    run_link: str
    model_id: str
    description: str
    tags: _containers.ScalarMap[str, str]
    stage: str
    created_ms: int
    updated_ms: int
    deleted: bool
    user_id: str
    def __init__(self, model_key: _Optional[str] = ..., project: _Optional[str] = ..., version: _Optional[int] = ..., source: _Optional[str] = ..., storage_location: _Optional[str] = ..., run_id: _Optional[str] = ..., run_project: _Optional[str] = ..., run_link: _Optional[str] = ..., model_id: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., stage: _Optional[str] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., deleted: _Optional[bool] = ..., user_id: _Optional[str] = ...) -> None: ...

class RunDeletion(_message.Message):
    __slots__ = ("project", "run_id", "reason")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    project: str
    run_id: str
    reason: str
    def __init__(self, project: _Optional[str] = ..., run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RetentionPolicy(_message.Message):
    __slots__ = ("project", "raw_days", "rollup_days")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RAW_DAYS_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_DAYS_FIELD_NUMBER: _ClassVar[int]
    project: str
    raw_days: int
    rollup_days: int
    def __init__(self, project: _Optional[str] = ..., raw_days: _Optional[int] = ..., rollup_days: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("project", "at_ms", "actor", "action", "target", "source", "before", "after")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    project: str
    at_ms: int
    actor: str
    action: str
    target: str
    source: str
    before: str
    after: str
    def __init__(self, project: _Optional[str] = ..., at_ms: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., source: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("create_project", "create_token", "list_tokens", "revoke_token", "delete_run", "set_retention")
    CREATE_PROJECT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DELETE_RUN_FIELD_NUMBER: _ClassVar[int]
    SET_RETENTION_FIELD_NUMBER: _ClassVar[int]
    create_project: ProjectRecord
    create_token: TokenRequest
    list_tokens: ListTokens
    revoke_token: str
    delete_run: RunDeletion
    set_retention: RetentionPolicy
    def __init__(self, create_project: _Optional[_Union[ProjectRecord, _Mapping]] = ..., create_token: _Optional[_Union[TokenRequest, _Mapping]] = ..., list_tokens: _Optional[_Union[ListTokens, _Mapping]] = ..., revoke_token: _Optional[str] = ..., delete_run: _Optional[_Union[RunDeletion, _Mapping]] = ..., set_retention: _Optional[_Union[RetentionPolicy, _Mapping]] = ...) -> None: ...

class TokenRequest(_message.Message):
    __slots__ = ("name", "projects", "scopes", "expires_in_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    projects: _containers.RepeatedScalarFieldContainer[str]
    scopes: _containers.RepeatedScalarFieldContainer[str]
    expires_in_ms: int
    def __init__(self, name: _Optional[str] = ..., projects: _Optional[_Iterable[str]] = ..., scopes: _Optional[_Iterable[str]] = ..., expires_in_ms: _Optional[int] = ...) -> None: ...

class ListTokens(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdminResponse(_message.Message):
    __slots__ = ("message", "secret", "tokens")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    message: str
    secret: str
    tokens: _containers.RepeatedCompositeFieldContainer[TokenRecord]
    def __init__(self, message: _Optional[str] = ..., secret: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[TokenRecord, _Mapping]]] = ...) -> None: ...
