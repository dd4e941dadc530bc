"""The record-and-replay engine: the session, the sources of nondeterminism, the step digests."""
from __future__ import annotations
