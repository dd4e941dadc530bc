"""The sha256 of a small piece of data (a script, a package list) without loading OpenSSL.

`hashlib` loads libcrypto on import (~2-8 ms, most of it dlopen), a real share of the 0.1 s
start-up budget (issue 15) for hashing one script. CPython's builtin implementation gives the same
digest; large files (engine/file_fingerprint.py) keep hashlib's faster one.
"""
from __future__ import annotations


def sha256_hex(data: bytes) -> str:
    """Return the hex sha256 of `data`, from CPython's builtin module when it has one, else hashlib."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]  # CPython >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,no-redef]  # CPython 3.11
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment]
    return sha256(data).hexdigest()
