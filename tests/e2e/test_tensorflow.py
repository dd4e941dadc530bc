"""TensorFlow and Keras: unseeded runs differ, record → replay is bit-identical and verified per step,
a perturbed replay names the step and the variable, and the TF profile lists the flagged ops."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO, SCRIPTS, detrun, python, verdict, weights_sha

pytest.importorskip("tensorflow")  # a guard only: CI installs the tensorflow extra and runs these

pytestmark = pytest.mark.tensorflow

KERAS = str(EXAMPLES / "keras_unseeded.py")
TAPE = str(EXAMPLES / "tf_gradient_tape.py")
KERAS_ARGS = ["--epochs", "2", "--samples", "192"]  # 2 epochs x 6 batches
KERAS_STEPS = 12
TAPE_ARGS = ["--epochs", "2", "--samples", "128"]  # 2 epochs x 4 batches
TAPE_STEPS = 8
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def _ok(result: object) -> object:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return result


def test_keras_fit_unseeded_differs_plainly_and_replays_exactly(workdir: Path) -> None:
    plain = [_ok(python(KERAS, *KERAS_ARGS, cwd=workdir, env=QUIET_TF)) for _ in range(2)]
    assert weights_sha(plain[0].stdout) != weights_sha(plain[1].stdout), "the Keras example is not nondeterministic"
    assert plain[0].stdout.splitlines()[0] != plain[1].stdout.splitlines()[0]  # the loss history too

    recorded = _ok(detrun("record", KERAS, *KERAS_ARGS, cwd=workdir, env=QUIET_TF))
    assert f"recorded {KERAS_STEPS} steps" in recorded.stderr

    replayed = _ok(detrun("replay", "trace.zst", KERAS, cwd=workdir, env=QUIET_TF))
    assert verdict(replayed.stderr).startswith(f"detrun: REPRODUCED ({KERAS_STEPS} steps"), replayed.stderr
    # History, predictions and weights: the script's whole stdout, byte for byte.
    assert replayed.stdout == recorded.stdout
    assert re.search(r"^history loss ", replayed.stdout, re.M)
    assert re.search(r"^predictions .* sha256 ", replayed.stdout, re.M)

    # A nudge of the output kernel before step 5 (an example callback) is caught at step 5.
    perturbed = detrun("replay", "trace.zst", KERAS, cwd=workdir, env={**QUIET_TF, "PERTURB_STEP": "5"})
    line = verdict(perturbed.stderr)
    assert line.startswith("detrun: DIVERGED at step 5: "), line
    assert "logits/kernel" in line, line
    assert weights_sha(perturbed.stdout) != weights_sha(recorded.stdout)


def test_gradient_tape_loop_differs_plainly_and_replays_exactly(workdir: Path) -> None:
    plain = [_ok(python(TAPE, *TAPE_ARGS, cwd=workdir, env=QUIET_TF)) for _ in range(2)]
    assert weights_sha(plain[0].stdout) != weights_sha(plain[1].stdout), "the tape example is not nondeterministic"

    # tf.function step: digests come from a tf.py_function placed after apply_gradients.
    recorded = _ok(detrun("record", TAPE, *TAPE_ARGS, cwd=workdir, env=QUIET_TF))
    assert f"recorded {TAPE_STEPS} steps" in recorded.stderr
    replayed = _ok(detrun("replay", "trace.zst", TAPE, cwd=workdir, env=QUIET_TF))
    assert verdict(replayed.stderr).startswith(f"detrun: REPRODUCED ({TAPE_STEPS} steps"), replayed.stderr
    assert replayed.stdout == recorded.stdout

    # The nudge lands between the gradient and the update of step 3: only that variable differs.
    perturbed = detrun("replay", "trace.zst", TAPE, cwd=workdir, env={**QUIET_TF, "PERTURB_STEP": "3"})
    line = verdict(perturbed.stderr)
    assert line.startswith("detrun: DIVERGED at step 3: variable 'dense2/kernel' differs"), line

    # Eager step: digests are taken in Python right after apply_gradients.
    eager = [*TAPE_ARGS, "--eager"]
    recorded = _ok(detrun("record", "-o", "eager.zst", TAPE, *eager, cwd=workdir, env=QUIET_TF))
    replayed = _ok(detrun("replay", "eager.zst", TAPE, cwd=workdir, env=QUIET_TF))
    assert verdict(replayed.stderr).startswith(f"detrun: REPRODUCED ({TAPE_STEPS} steps"), replayed.stderr
    assert replayed.stdout == recorded.stdout


def test_every_tf_randomness_source_is_recorded_and_replayed(workdir: Path) -> None:
    script = str(SCRIPTS / "tf_sources.py")
    plain = _ok(python(script, cwd=workdir, env=QUIET_TF))
    recorded = _ok(detrun("record", script, cwd=workdir, env=QUIET_TF))
    # Each line is one source; unhooked, every one of them differs from run to run.
    same = [a for a, b in zip(plain.stdout.splitlines(), recorded.stdout.splitlines()) if a == b]
    assert not same, f"these did not vary between plain runs, so the test proves nothing for them: {same}"
    replayed = detrun("replay", "trace.zst", script, cwd=workdir, env=QUIET_TF)
    assert replayed.stdout == recorded.stdout
    # Every value fed back, but no model trained: UNVERIFIED (5), never DIVERGED.
    assert replayed.returncode == 5 and verdict(replayed.stderr).startswith("detrun: UNVERIFIED"), replayed.stderr
    assert "DIVERGED" not in replayed.stderr and "warning" not in replayed.stderr, replayed.stderr
    shown = json.loads(_ok(detrun("show", "--json", "trace.zst", cwd=workdir)).stdout)
    kinds = json.dumps(shown)
    for kind in ("tf.global_seed", "tf.seed", "tf.generator", "tf.threads", "tf.timestamp", "keras.seed"):
        assert kind in kinds, kind


def test_detrun_does_not_import_tensorflow_for_other_scripts(workdir: Path) -> None:
    script = workdir / "no_tf.py"
    script.write_text("import sys\nprint('tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    assert _ok(detrun("record", "-q", str(script), cwd=workdir)).stdout == "False False\n"


def _profile(script: str, *args: str, cwd: Path) -> list[dict]:
    """Run `detrun profile --steps 2 --json FILE SCRIPT ARGS` and return the JSON's op objects."""
    result = detrun("profile", "--steps", "2", "--json", str(cwd / "profile.json"), script, *args, cwd=cwd,
                    env=QUIET_TF)
    assert result.returncode == 0, result.stderr
    document = json.loads((cwd / "profile.json").read_text())
    assert document["framework"] == "tensorflow" and document["steps"]["completed"] == 2, document["steps"]
    return document["ops"]


@pytest.mark.parametrize("mode", ["tf.function", "eager"])
def test_profile_lists_flagged_ops_with_their_lines(mode: str, workdir: Path) -> None:
    script = str(SCRIPTS / "tf_flagged_ops.py")
    findings = _profile(script, cwd=workdir) if mode == "tf.function" else _profile(script, "--eager", cwd=workdir)
    by_op = {f["op"]: f for f in findings}
    assert {"UnsortedSegmentSum", "ResizeBilinearGrad"} <= set(by_op), sorted(by_op)
    segment = by_op["UnsortedSegmentSum"]
    lines = {(Path(s["file"]).name, s["line"]) for s in segment["call_sites"]}
    # The explicit unsorted_segment_sum, and the densified tf.gather gradient.
    assert ("tf_flagged_ops.py", 17) in lines and ("tf_flagged_ops.py", 21) in lines, lines
    resize = by_op["ResizeBilinearGrad"]
    # A gradient op is attributed to the forward line that created the op it differentiates.
    assert (Path(resize["call_site"]["file"]).name, resize["call_site"]["line"]) == ("tf_flagged_ops.py", 18)
    assert resize["phases"] == ["backward"]
    for finding in (segment, resize):
        assert finding["nondeterministic_cuda"] is True and finding["raises_in_det_mode"] is False
        assert finding["det_mode_fixes"] is True and finding["severity"] == "nondeterministic"
        assert finding["source"] and finding["count"] >= 1


def test_profile_does_not_stop_at_an_op_that_refuses_determinism(workdir: Path) -> None:
    findings = _profile_to_the_end(str(SCRIPTS / "tf_raises_under_determinism.py"), cwd=workdir)
    by_op = {f["op"]: f for f in findings}
    timestamp = by_op["Timestamp"]
    assert timestamp["raises_in_det_mode"] is True and "determinism" in timestamp["raised_here"]
    assert timestamp["call_site"]["line"] == 8
    # The op after it was still found, by a second run without determinism.
    assert by_op["UnsortedSegmentSum"]["call_site"]["line"] == 9


def _profile_to_the_end(script: str, cwd: Path) -> list[dict]:
    """Profile a script that makes no training step; return the JSON's op objects."""
    result = detrun("profile", "--json", str(cwd / "profile.json"), script, cwd=cwd, env=QUIET_TF)
    assert result.returncode == 0, result.stderr
    return json.loads((cwd / "profile.json").read_text())["ops"]


def test_tensorflow_knowledge_base_is_well_formed() -> None:
    data = json.loads((REPO / "detrun/profiler/kb/tensorflow.json").read_text())
    assert data["framework"] == "tensorflow" and data["schema_version"] == 1
    seen: set[str] = set()
    for entry in data["ops"]:
        assert entry["ops"] and entry["api"] and entry["note"], entry
        assert set(entry["source"]) <= set(data["sources"]), entry
        for field in ("nondeterministic_gpu", "raises_with_op_determinism", "op_determinism_fixes"):
            assert entry[field] in (True, False, None), (field, entry)
        assert not seen & set(entry["ops"]), f"op listed twice: {seen & set(entry['ops'])}"
        seen |= set(entry["ops"])
    for required in ("UnsortedSegmentSum", "ResizeBilinearGrad", "ResizeNearestNeighborGrad",
                     "SparseSoftmaxCrossEntropyWithLogits", "ScatterNd", "Bincount", "FusedBatchNormGradV3",
                     "SparseSegmentSumGrad", "BiasAddGrad"):
        assert required in seen, required
