"""Verdict corpus benchmark: how honest is detrun's verdict on realistic training scripts?

For each script in tests/corpus/ (see tests/corpus/catalog.py): two plain runs (do they differ?),
`detrun record`, `detrun replay` (verdict, exit status, stdout identical?) and a replay with
DETRUN_CORPUS_PERTURB_STEP=k (verdict and step). Prints a markdown table and counts false verdicts:
REPRODUCED when results differ, DIVERGED when results and stdout are identical, a wrong step.

    .venv/bin/python benchmarks/verdict_corpus.py                    # all scripts, one at a time
    .venv/bin/python benchmarks/verdict_corpus.py --only mnist_cnn,manual_sgd --json out.json

It is a benchmark, not a test: it exits 0 whatever the verdicts (1 only for bad arguments).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from corpus.catalog import BY_NAME, CASES, Outcome, expected_text, run_case  # noqa: E402


def verdict_cell(outcome: Outcome, which: str) -> str:
    """Return a short verdict for the table, with the step and exit status."""
    run = getattr(outcome, which)
    if run is None:
        return "—"
    if run.verdict is None:
        return f"none (exit {run.returncode})"
    step = f" @{run.step}" if run.step is not None else ""
    return f"{run.verdict}{step} (exit {run.returncode})"


def table(outcomes: list[Outcome]) -> str:
    """Return the markdown table of all outcomes."""
    rows = ["| script | style | plain runs differ? | record→replay verdict | stdout identical? "
            "| perturbed verdict | expected | OK? |",
            "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        if o.record and o.replay:
            identical = "yes" if o.stdout_identical else ("rendered only" if o.rendered_identical else "no")
            identical += "" if o.results_equal else " (results differ)"
        else:
            identical = "—"
        issues = o.false_verdicts + [f"honest but {u}" for u in o.unexpected] + [f"setup: {p}" for p in o.problems]
        ok = "✓" if not issues else "✗ " + "; ".join(issues)
        rows.append(f"| {o.case.name} | {o.case.style} | {'yes' if o.plain_differ else 'NO'} "
                    f"| {verdict_cell(o, 'replay')} | {identical} | {verdict_cell(o, 'perturbed')} "
                    f"| {expected_text(o.case)} | {ok} |")
    return "\n".join(rows)


def main() -> int:
    """Run the corpus and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated script names (default: all)")
    parser.add_argument("--skip-slow", action="store_true", help="leave out the heavy frameworks")
    parser.add_argument("--json", dest="json_path", help="also write every measurement as JSON here")
    parser.add_argument("--tmp", help="make the per-script temporary directories under this folder")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-run progress on stderr")
    args = parser.parse_args()

    cases = CASES
    if args.only:
        names = [name.strip().removesuffix(".py") for name in args.only.split(",") if name.strip()]
        unknown = [name for name in names if name not in BY_NAME]
        if unknown:
            print(f"unknown corpus scripts: {', '.join(unknown)}; known: {', '.join(BY_NAME)}", file=sys.stderr)
            return 1
        cases = [BY_NAME[name] for name in names]
    if args.skip_slow:
        cases = [case for case in cases if not case.slow]

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    outcomes = []
    start = time.monotonic()
    # One script at a time: the scripts time their own Ctrl-C and the machine is small.
    for case in cases:
        log(f"{case.name}…")
        outcomes.append(run_case(case, Path(args.tmp) if args.tmp else None, log=log))

    false = sum(len(o.false_verdicts) for o in outcomes)
    setup = sum(len(o.problems) for o in outcomes)
    unexpected = sum(len(o.unexpected) for o in outcomes)
    print(table(outcomes))
    print(f"\n{len(outcomes)} scripts, {false} false verdicts, {unexpected} honest but unexpected, "
          f"{setup} setup problems, "
          f"{time.monotonic() - start:.0f} s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"false_verdicts": false, "unexpected": unexpected, "setup_problems": setup, "cases": [o.to_json() for o in outcomes]},
            indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
