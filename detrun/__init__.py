"""detrun: record and replay ML training runs bit for bit."""
from __future__ import annotations

__version__ = "0.1.0"
