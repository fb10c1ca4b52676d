#!/usr/bin/env python3
"""Generates the grpcio stubs of sagalog's API from the repository's proto/ folder.

Owns nothing but the generation: the stubs are never committed (the folder they go to,
`_generated/` beside this script by default, is in .gitignore), so they always match the proto
of the checkout. Needs the `grpcio-tools` package (pip install grpcio grpcio-tools).

    python3 gen_stubs.py              # into docs/examples/python/_generated/
    python3 gen_stubs.py --out DIR    # elsewhere (sagalog_worker.py then needs SAGALOG_STUBS_DIR=DIR)
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto"))
PROTO = os.path.join("sagalog", "v1", "sagalog.proto")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "_generated"), help="where the stubs go")
    args = parser.parse_args()
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError:
        print("gen_stubs: grpcio-tools is not installed: pip install grpcio grpcio-tools", file=sys.stderr)
        return 2
    if not os.path.exists(os.path.join(PROTO_ROOT, PROTO)):
        print(f"gen_stubs: {os.path.join(PROTO_ROOT, PROTO)} not found (run from a sagalog checkout)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    # The well-known types (none used today) come with grpcio-tools.
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={args.out}",
        f"--grpc_python_out={args.out}",
        os.path.join(PROTO_ROOT, PROTO),
    ])
    if code != 0:
        print(f"gen_stubs: protoc failed with status {code}", file=sys.stderr)
        return 1
    print(f"gen_stubs: stubs written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
