"""A real gRPC server and client (grpcio, generic byte handlers, no generated code) for the router's
tests of pools with `protocol: h2c`.

  echo.py server          serves atlantis.test.Echo and grpc.health.v1.Health on 127.0.0.1, a free port,
                          printed on stdout
  echo.py client TARGET   calls every method through TARGET (host:port) and prints one JSON line
  echo.py serving TARGET yes|no   sets the server's health (SERVING or NOT_SERVING), directly
"""

import json
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "atlantis.test.Echo"


def say(request, context):
    md = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-echo-trailer", "yes"),))
    return json.dumps(
        {
            "got": request.decode(),
            "x-forwarded-for": md.get("x-forwarded-for"),
            "x-request-id": md.get("x-request-id"),
        }
    ).encode()


def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()


def collect(requests, context):
    return b"".join(requests)


def fail(request, context):
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "no entry")


def serve():
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)

    def set_serving(request, context):
        status = "SERVING" if request == b"yes" else "NOT_SERVING"
        checker.set("", health_pb2.HealthCheckResponse.ServingStatus.Value(status))
        return b""

    handlers = {
        "SetServing": grpc.unary_unary_rpc_method_handler(set_serving),
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def client(target):
    out = {}
    with grpc.insecure_channel(target) as ch:
        method = lambda name: f"/{SERVICE}/{name}"
        resp, call = ch.unary_unary(method("Say")).with_call(b"ping", timeout=10)
        out["say"] = json.loads(resp)
        out["trailer"] = dict(call.trailing_metadata()).get("x-echo-trailer")
        out["count"] = len([m for m in ch.unary_stream(method("Count"))(b"1000", timeout=10)])
        chunks = (str(i).encode() for i in range(100))
        out["collect"] = len(ch.stream_unary(method("Collect"))(chunks, timeout=10))
        for name in ("Fail", "Nope"):
            try:
                ch.unary_unary(method(name))(b"", timeout=10)
                out[name] = "OK"
            except grpc.RpcError as e:
                out[name] = e.code().name
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        serve()
    elif sys.argv[1:2] == ["client"] and len(sys.argv) == 3:
        client(sys.argv[2])
    elif sys.argv[1:2] == ["serving"] and len(sys.argv) == 4:
        with grpc.insecure_channel(sys.argv[2]) as ch:
            ch.unary_unary(f"/{SERVICE}/SetServing")(sys.argv[3].encode(), timeout=10)
    else:
        sys.exit(__doc__)
