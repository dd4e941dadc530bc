"""The mask for lines of output: durations, rates, timestamps and addresses replaced with `…`.

Shared by the stdout check (sources/stdout_lines.py) and the written text files' check
(sources/file_outputs.py), so that a log file and the terminal are compared alike.
"""
from __future__ import annotations

import re

MASK = "…"
MASK_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("timestamp", re.compile(r"\d{4}-\d{2}-\d{2}[T _]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")),
    ("clock time", re.compile(r"\b\d{1,3}(:\d{2}){1,2}(\.\d+)?\b")),
    # The value may be quoted: transformers logs {'train_runtime': '0.2267', ...}.
    ("timing key", re.compile(r"(?i)(['\"]?\w*(runtime|per_second|_per_sec|elapsed|duration|_time|time_|seconds|"
                              r"throughput|speed|ms_per|it_s)\w*['\"]?(\s*[:=]\s*|\s+))['\"]?[-+]?[\d.]+(e[-+]?\d+)?['\"]?")),
    # Lightning's progress bar shows its logger's version, which counts the runs already in the directory.
    ("logger version", re.compile(r"(v_num\s*[:=]\s*)['\"]?[\w.]+['\"]?")),
    ("rate", re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?\s?(it|its|s|step|steps|sample|samples|batch|batches|"
                        r"token|tokens|ex|examples)/(s|sec|it|step)\b")),
    ("duration", re.compile(r"(?<![\w.])[-+]?\d+(\.\d+)?(e[-+]?\d+)?\s?(ns|us|µs|ms|s|sec|secs|second|seconds|"
                            r"min|mins|minute|minutes|h|hr|hrs|hour|hours)(/\w+)?\b")),
    ("address", re.compile(r"0x[0-9a-fA-F]{8,}")),
    # A progress bar's glyphs: rich (Lightning, Keras) fits the bar to the console width left over
    # by the masked times and rates beside it, so its length varies with their widths.
    ("progress bar", re.compile(r"[━╸╺╾╼█▏▎▍▌▋▊▉▐░▒▓]+")),
)


def mask_line(line: str, extra: tuple[re.Pattern[str], ...] = ()) -> str:
    """Return a rendered line with durations, rates, timestamps and addresses (and `extra`) masked."""
    for name, rule in MASK_RULES:
        if name in ("timing key", "logger version"):
            line = rule.sub(lambda m: m.group(1) + MASK, line)
        else:
            line = rule.sub(MASK, line)
    for rule in extra:
        line = rule.sub(MASK, line)
    return line
