"""What the real-time process and the worker say to each other over their socket.

Every record is one ``Connection.send_bytes`` call: a kind byte, then its body.

worker -> real-time side:
    ``SEND``     timed MIDI: repeated (at: float64 monotonic seconds, NaN for "as soon as possible"; n: uint8;
                 n bytes of one MIDI message)
    ``BEAT``     float64: by when the worker will hand over its next step (the stall watchdog's deadline)
    ``JOURNAL``  pickle of a dict: the session now being played (path, bpm, start, meter, ...), so the real-time
                 side can write what was played if the worker dies
    ``QUERY``    pickle of a str: ``counts`` or ``outputs``; answered by a ``REPLY``
    ``CLOSE``    no body: drain what was handed, turn off what still sounds, answer with a ``REPLY``
real-time side -> worker:
    ``HELLO``    pickle of a dict, the first record: the command to run, its arguments, the ports' facts
    ``HEARD``    the player's MIDI: repeated (t: float64, the monotonic time of its frame; n; n bytes)
    ``REPLY``    pickle of a dict
"""

from __future__ import annotations

import math
import struct

SEND, BEAT, JOURNAL, QUERY, CLOSE = b"S", b"B", b"J", b"Q", b"C"
HELLO, HEARD, REPLY = b"H", b"I", b"R"

_EVENT = struct.Struct("<dB")
_TIME = struct.Struct("<d")
ASAP = math.nan


def pack_events(kind: bytes, events) -> bytes:
    """``kind`` then each (time, bytes) of ``events``."""
    parts = [kind]
    for t, data in events:
        parts.append(_EVENT.pack(t, len(data)))
        parts.append(data)
    return b"".join(parts)


def unpack_events(record: bytes) -> list[tuple[float, bytes]]:
    """The (time, bytes) of a ``SEND`` or ``HEARD`` record; a truncated tail is dropped."""
    events, i, end = [], 1, len(record)
    while i + _EVENT.size <= end:
        t, n = _EVENT.unpack_from(record, i)
        i += _EVENT.size
        if i + n > end:
            break
        events.append((t, record[i:i + n]))
        i += n
    return events


def pack_time(kind: bytes, t: float) -> bytes:
    return kind + _TIME.pack(t)


def unpack_time(record: bytes) -> float:
    return _TIME.unpack_from(record, 1)[0]
