"""The child interpreter's entry point: open the session, install the hooks, run the script.

Started by detrun.launch as `python -m detrun._child` with the session config in an environment
variable, which is removed before the user's code can see it.
"""
from __future__ import annotations

import json
import os
import sys


def main() -> None:
    """Run the configured target under a record or replay session and exit as it did."""
    from detrun.launch import CHILD_CONFIG_VAR

    raw = os.environ.pop(CHILD_CONFIG_VAR, None)
    if raw is None:
        sys.exit("detrun: error: detrun._child is started by `detrun record` / `detrun replay`, not by hand")
    config = json.loads(raw)

    from detrun.errors import DetrunError
    from detrun.engine.session import Session
    from detrun.engine.sources import all_sources
    from detrun.runner import Runner, Target
    from detrun.trace import TraceWriter, read_trace

    target = Target(config["target"]["name"], tuple(config["target"]["args"]), config["target"]["module"])
    try:
        runner = Runner(target)
        if config["mode"] == "record":
            writer = TraceWriter(config["trace_tmp"], config["header"])
            session = Session("record", writer=writer, quiet=config["quiet"],
                              settings={**config["settings"], "trace_path": config["trace_path"]})
        else:
            trace = read_trace(config["trace_path"])
            if not trace.complete and not config["quiet"]:
                print(f"detrun: warning: the trace is incomplete ({trace.end.get('reason') if trace.end else '?'}); "
                      "only its recorded part can be checked", file=sys.stderr)
            session = Session("replay", trace=trace, strict=config["strict"], quiet=config["quiet"],
                              settings=config["settings"], verbose=config.get("verbose", False),
                              report_json=config.get("report_json"),
                              ignore_output=tuple(config.get("ignore_output", ())))
            for cause in config.get("causes", []):  # environment differences, most likely first
                session.note_cause(cause)
    except DetrunError as exc:
        print(f"detrun: error: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))

    session.install(all_sources())
    outcome = runner.run()
    verdict = session.finish(outcome)
    if verdict is not None and outcome.exit_status == 0 and not outcome.keyboard_interrupt:
        # The script's own non-zero status passes through; otherwise the verdict decides.
        sys.stdout.flush()
        sys.exit(verdict.exit_code)
    outcome.finish()


if __name__ == "__main__":
    main()
