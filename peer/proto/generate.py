"""Regenerate the `*_pb2.py` modules from the `*.proto` files in this folder.

Usage: `python -m peer.proto.generate` (needs the `grpcio-tools` dev dependency).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    from grpc_tools import protoc  # a dev dependency, imported only here

    here = Path(__file__).resolve().parent
    protos = sorted(str(path.name) for path in here.glob("*.proto"))
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = ["protoc", f"-I{here}", f"-I{include}", f"--python_out={here}", f"--pyi_out={here}", *protos]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return code
    print(f"generated code for {', '.join(protos)} in {here}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
