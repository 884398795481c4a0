"""Regenerate caffe_surgery/caffe_pb2.py from proto/caffe.proto with grpcio-tools' protoc.

Usage: python scripts/gen_proto.py
"""
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    """Run protoc on proto/caffe.proto and place the module inside the package."""
    args = [
        "protoc",
        f"--proto_path={ROOT / 'proto'}",
        f"--python_out={ROOT / 'caffe_surgery'}",
        str(ROOT / "proto" / "caffe.proto"),
    ]
    status = protoc.main(args)
    if status != 0:
        print(f"error: protoc failed with status {status}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
