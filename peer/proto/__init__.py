"""Protobuf schemas (`*.proto`) and their generated code (`*_pb2.py`, committed).

Regenerate with `make proto` (runs `python -m peer.proto.generate`). Only each subsystem's
`protocol.py` imports the generated classes; the rest of the code sees dataclasses.
"""
