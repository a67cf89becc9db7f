"""Stage output reaches the logs line by line, with progress-bar redraws thinned out."""

from __future__ import annotations

import io
import itertools

from skinflow.orchestration.dvc_worker import output_lines


class Chunks(io.RawIOBase):
    """A pipe that delivers the given byte chunks one read at a time."""

    def __init__(self, *chunks: bytes):
        self._chunks = list(chunks)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


def frozen_clock():
    return 0.0


def test_newline_kinds_and_a_last_line_without_newline():
    assert list(output_lines(io.BytesIO(b"a\nb\r\nc"), clock=frozen_clock)) == ["a", "b", "c"]


def test_progress_redraws_are_thinned_but_the_final_state_is_kept():
    stream = io.BytesIO(b"start\n\rbar 1%\rbar 50%\rbar 99%\rbar 100%\ndone\n")
    assert list(output_lines(stream, progress_every_s=10, clock=frozen_clock)) == [
        "start", "bar 1%", "bar 100%", "done"]


def test_progress_redraws_pass_when_enough_time_has_gone_by():
    ticks = itertools.count(0, 11).__next__
    stream = io.BytesIO(b"\rbar 1%\rbar 50%\rbar 100%\n")
    assert list(output_lines(stream, progress_every_s=10, clock=ticks)) == ["bar 1%", "bar 50%", "bar 100%"]


def test_crlf_split_across_reads_is_one_line_ending():
    stream = Chunks(b"\rbar\r", b"line one\r", b"\nline two\n")
    assert list(output_lines(stream, progress_every_s=10, clock=frozen_clock)) == ["bar", "line one", "line two"]


def test_invalid_utf8_is_replaced_not_fatal():
    assert list(output_lines(io.BytesIO(b"ok \xff\xfe\n"), clock=frozen_clock)) == ["ok \ufffd\ufffd"]
