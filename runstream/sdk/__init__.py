"""The SDK a training job installs: runs, the background sender, the spool and the gRPC transport.

It depends on the wire layer (protos, config, errors) only: nothing of the server roles.
"""

from runstream.sdk.run import Run, RunExistsError, Sender, SenderConfig, client_config, init, send_spool_file
from runstream.sdk.transport import GrpcTransport, SendError, Transport, connect, tls_credentials

__all__ = ["GrpcTransport", "Run", "RunExistsError", "SendError", "Sender", "SenderConfig", "Transport", "client_config", "connect",
           "init", "send_spool_file", "tls_credentials"]
