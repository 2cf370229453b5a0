"""Transport settings, grouped in one frozen dataclass with defaults that suit a volunteer's peer."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class TransportConfig:
    """Limits and timeouts of the secure transport. All durations are in seconds.

    - `max_record_size`: the largest plaintext record we send or accept (the AEAD unit).
    - `stream_window`: bytes a stream's sender may have in flight before the reader acknowledges
      them; it bounds the memory one stream can pin on the receiver.
    - `max_streams`: concurrent streams per connection; a stream past it is refused (RESOURCE_EXHAUSTED).
    - `max_message_size`: the largest RPC message (a protobuf or bytes message, not a tensor).
    - `max_tensor_size`: the largest tensor payload a peer accepts in one message.
    - `keepalive_interval` / `keepalive_timeout`: ping an idle connection; close it when nothing
      arrives for `keepalive_timeout`.
    - `idle_timeout`: the pool closes connections that carried no stream for this long (0: never).
    """

    max_record_size: int = 1 * MiB
    stream_window: int = 4 * MiB
    max_streams: int = 1024
    max_message_size: int = 64 * MiB
    max_tensor_size: int = 16 * 1024 * MiB
    handshake_timeout: float = 10.0
    dial_timeout: float = 5.0
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 45.0
    idle_timeout: float = 300.0
    write_buffer_high: int = 4 * MiB

    def __post_init__(self) -> None:
        if not 4 * KiB <= self.max_record_size <= 16 * MiB:
            raise ValueError("max_record_size must be between 4 KiB and 16 MiB")
        if self.stream_window < 64 * KiB:
            raise ValueError("stream_window must be at least 64 KiB")
        if self.max_streams < 1:
            raise ValueError("max_streams must be positive")
        for name in ("handshake_timeout", "dial_timeout", "keepalive_interval", "keepalive_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
