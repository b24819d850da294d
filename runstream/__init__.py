"""runstream: experiment tracking on an event-streaming pipeline.

    import runstream
    run = runstream.init(project="vision", name="resnet", config={"lr": 3e-4})
    run.log({"loss": 0.3, "acc": 0.9}, step=1)
    run.finish()
"""

from runstream.sdk import Run, SenderConfig, init
from runstream.transport import GrpcTransport, SendError, Transport

__all__ = ["GrpcTransport", "Run", "SendError", "SenderConfig", "Transport", "init"]
__version__ = "0.1.0"
