"""Dump what a script can see of how it was started, as JSON on stdout."""
import json
import os
import sys

main = sys.modules["__main__"]
spec = globals().get("__spec__")
loader = globals().get("__loader__")
print(json.dumps({
    "argv": sys.argv,
    "path0": sys.path[0],
    "path_rest": sys.path[1:],
    "name": __name__,
    "file": globals().get("__file__"),
    "cached": globals().get("__cached__", "<absent>"),
    "package": globals().get("__package__"),
    "spec": None if spec is None else [spec.name, spec.origin, spec.parent],
    "loader": type(loader).__name__,
    "loader_name": getattr(loader, "name", None),
    "doc": __doc__,
    "main_is_globals": main.__dict__ is globals(),
    "globals": sorted(globals()),
    "builtins_is_module": type(__builtins__).__name__,
    "future_annotations": "annotations" in globals(),
    "annotations_flag": bool(sys._getframe().f_code.co_flags & 0x1000000),
    "env_detrun": sorted(k for k in os.environ if k.startswith("DETRUN")),
    "cwd": os.getcwd(),
}, indent=1, sort_keys=True))
code = os.environ.get("PROBE_EXIT")
if code == "raise":
    def inner():
        raise ValueError("boom from the probe")
    inner()
if code is not None:
    sys.exit(int(code) if code.lstrip("-").isdigit() else code)
