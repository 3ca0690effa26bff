"""The dispatcher's framing: messages read from a pipe many at a time."""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading

import pytest

from methodpool._transport._wire import FrameReader


def test_frame_reader_reads_many_messages_per_call_and_big_ones_whole() -> None:
    # The result thread reads whole pipe-fulls of results: every message,
    # whatever its size, comes out whole and in order.
    reader_end, writer_end = multiprocessing.Pipe(duplex=False)
    messages = [b"", b"x", bytes(range(256)) * 4, os.urandom(200_000), b"tail"]

    def write() -> None:
        for message in messages:
            writer_end.send_bytes(message)
        writer_end.close()

    thread = threading.Thread(target=write)
    thread.start()
    reader = FrameReader(reader_end)
    got: list[bytes] = []
    with pytest.raises(EOFError):
        while True:
            got.extend(reader.read())
    thread.join()
    assert got == messages


def test_frame_reader_drops_a_message_cut_short() -> None:
    reader_end, writer_end = multiprocessing.Pipe(duplex=False)
    os.write(writer_end.fileno(), struct.pack("!i", 10) + b"12345")
    writer_end.close()
    reader = FrameReader(reader_end)
    assert reader.read() == []
    with pytest.raises(EOFError):
        reader.read()
