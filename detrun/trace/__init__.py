"""The trace format: the only code that knows the bytes of a detrun trace."""
from __future__ import annotations

from detrun.trace.format import FORMAT_NAME, FORMAT_VERSION
from detrun.trace.reader import Trace, read_header, read_trace
from detrun.trace.writer import TraceWriter

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Trace", "TraceWriter", "read_header", "read_trace"]
