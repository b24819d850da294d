"""runstream: experiment tracking on an event-streaming pipeline.

    import runstream
    run = runstream.init(project="vision", name="resnet", config={"lr": 3e-4})
    run.log({"loss": 0.3, "acc": 0.9}, step=1)
    run.finish()

Layers, each importing only those below it (tests/test_architecture.py holds it so):
    runstream.cli                      the command line and the demo
    runstream.ops                      broker, roles, supervisor (`runstream up`)
    runstream.ingest | .processors | .storage | .dashboards    the stages, independent of each other
    runstream.server                   what the stages share: Kafka plumbing, governance state, metrics
    runstream.sdk                      what a training job imports (slim install)
    runstream.read                     the read API (runstream.Api; the [read] extra)
    runstream.wire | runstream.v1      protos, encoding, topics, config, errors, audit rule
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runstream.read import Api
    from runstream.sdk import GrpcTransport, Run, RunExistsError, SenderConfig, SendError, Transport, init

__all__ = ["Api", "GrpcTransport", "Run", "RunExistsError", "SendError", "SenderConfig", "Transport", "init"]
__version__ = "0.1.0"

# Loaded on first use: a server role importing runstream.wire or runstream.storage does not load the SDK, grpc's
# client side, psutil or the read API (tests/test_architecture.py checks sys.modules).
_HOME = {"Api": "runstream.read"} | {name: "runstream.sdk" for name in __all__ if name != "Api"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'runstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
