"""runstream's exceptions. Every error has a retry class.

    RunstreamError
    ├── ConfigError              bad configuration; fix the file or env var named
    ├── ValidationError          bad input, never retried (gRPC INVALID_ARGUMENT); names the field
    ├── AuthError                no or unknown token (UNAUTHENTICATED)
    │   └── PermissionDenied     token does not cover the project (PERMISSION_DENIED)
    ├── Unavailable              a dependency is down or slow; retry with backoff (UNAVAILABLE)
    │   └── Overloaded           too much in flight; retry later (RESOURCE_EXHAUSTED)
    └── StorageError             ClickHouse refused or failed a statement
        └── StoreLocked          the embedded store is open in another process
"""

from __future__ import annotations


class RunstreamError(Exception):
    """Base of every runstream error."""


class ConfigError(RunstreamError):
    pass


class ValidationError(RunstreamError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class AuthError(RunstreamError):
    pass


class PermissionDenied(AuthError):
    pass


class Unavailable(RunstreamError):
    pass


class Overloaded(Unavailable):
    pass


class StorageError(RunstreamError):
    pass


class StoreLocked(StorageError):
    pass
