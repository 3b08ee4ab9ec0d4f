"""A gRPC proxyless client (Python grpcio) on weft's control plane.

It resolves `xds:///TARGET` with grpcio's own xDS client, configured by the bootstrap file in
GRPC_XDS_BOOTSTRAP (the control plane's ADS address), and makes CALLS unary calls to the
test peer's Echo service. It prints `ok N` and exits 0 when every call succeeded.

usage: grpc_xds_client.py TARGET CALLS PROTO_DIR
"""

import sys
import tempfile

import grpc
from grpc_tools import protoc


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="weft-grpc-stubs-")
    rc = protoc.main(
        ["protoc", "-I", proto_dir, f"--python_out={out}", f"--grpc_python_out={out}", "echo.proto"]
    )
    if rc != 0:
        sys.exit(f"protoc failed on {proto_dir}/echo.proto")
    sys.path.insert(0, out)
    import echo_pb2
    import echo_pb2_grpc

    return echo_pb2, echo_pb2_grpc


def main():
    target, calls, proto_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    pb, pb_grpc = stubs(proto_dir)
    with grpc.insecure_channel(f"xds:///{target}") as channel:
        # The first call waits for the xDS configuration (listener, routes, clusters, endpoints).
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.EchoStub(channel)
        for i in range(calls):
            reply = stub.Unary(pb.Msg(text=f"xds-{i}"), timeout=10, wait_for_ready=True)
            if reply.text != f"xds-{i}":
                sys.exit(f"call {i}: unexpected reply {reply.text!r}")
    print(f"ok {calls}")


if __name__ == "__main__":
    main()
