"""Turn the flushed prefix of a killed recording into a well-formed trace marked incomplete."""
from __future__ import annotations

import os

from detrun.trace.format import DECLARE_KIND, END
from detrun.trace.registry import STEP
from detrun.trace.reader import salvage_objects
from detrun.trace.writer import publish, write_objects


def salvage(partial_path: str, output: str, reason: str, exit_status: int, *, force: bool = False) -> int | None:
    """Rewrite a partial trace as `output` with an end record saying why it stopped.

    Return the number of recorded steps, or None when nothing usable was flushed (no header);
    the partial file is removed either way. The salvaged trace is written beside the partial one
    and published like a finished trace: never over an existing file unless `force`.
    """
    objects = salvage_objects(partial_path)
    os.unlink(partial_path)
    if not objects or not isinstance(objects[0], dict):
        return None
    kinds: dict[int, str] = {}
    counts: dict[str, int] = {}
    for obj in objects[1:]:
        if not (isinstance(obj, list) and len(obj) == 2):
            continue  # a segment marker
        if obj[0] == DECLARE_KIND:
            kinds[obj[1][0]] = obj[1][1]
        elif obj[0] in kinds:
            counts[kinds[obj[0]]] = counts.get(kinds[obj[0]], 0) + 1
    steps = counts.get(STEP, 0)
    objects.append([END, {"complete": False, "reason": reason, "exit_status": exit_status, "steps": steps,
                          "final_digest": None, "counts": counts}])
    salvaged = partial_path + ".salvaged"
    write_objects(salvaged, objects)
    publish(salvaged, output, force=force)
    return steps
