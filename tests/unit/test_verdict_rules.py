"""The verdict rules and the stdout rendering, in process: each rule can fail."""
from __future__ import annotations

from detrun.engine.sources.stdout_lines import TerminalLines, compare_lines, mask_line
from detrun.engine.verdict import Divergence, ReplayFacts, decide, report


def facts(**overrides: object) -> ReplayFacts:
    base: dict[str, object] = dict(divergences=[], mismatches=[], causes=[], checks={"steps": 10}, hook_failures=[],
                                   unrecorded=[], steps=10, events_used=12, trace_complete=True, trace_reason="exited")
    base.update(overrides)
    return ReplayFacts(**base)  # type: ignore[arg-type]


def test_reproduced_needs_a_state_check() -> None:
    assert decide(facts()).status == "REPRODUCED"
    batches_only = decide(facts(checks={"batches": 16, "stdout lines": 3}, steps=0))
    assert batches_only.status == "UNVERIFIED" and "nothing of the training state" in batches_only.line
    assert decide(facts(checks={"final state": 1}, steps=0)).status == "REPRODUCED"
    assert decide(facts(checks={"losses": 4}, steps=0)).exit_code == 0


def test_event_mismatches_are_causes_not_the_verdict() -> None:
    listing = Divergence("fs.listing", "os.listdir('out') lists other files: added ['a.pt']", step=3, check="event")
    assert decide(facts(mismatches=[listing])).status == "REPRODUCED"
    state = Divergence("step", "parameter 'fc.weight' differs", step=5)
    diverged = decide(facts(divergences=[state], mismatches=[listing]))
    assert diverged.status == "DIVERGED" and diverged.exit_code == 3
    assert diverged.line.startswith("DIVERGED at step 5: parameter 'fc.weight' differs")
    assert "likely cause: os.listdir('out')" in diverged.line


def test_a_mismatch_after_the_divergence_is_not_its_cause() -> None:
    late = Divergence("py.seed", "random.seed() called at b.py:9", step=8, check="event")
    line = decide(facts(divergences=[Divergence("step", "loss differs", step=5)], mismatches=[late],
                        causes=["torch: recorded 2.12, now 2.13"])).line
    assert "likely cause: torch: recorded 2.12" in line and "b.py:9" not in line


def test_hook_failures_and_unrecorded_children_lower_the_verdict() -> None:
    failed = decide(facts(hook_failures=["the optimizer step digest: KeyError: 3"]))
    assert failed.status == "UNVERIFIED" and failed.exit_code == 5 and "KeyError" in failed.line
    children = decide(facts(unrecorded=["multiprocessing.Process(target=train)"]))
    assert children.status == "UNVERIFIED" and "target=train" in children.line
    # A state check that differs is still DIVERGED, and the children are named as the cause.
    both = decide(facts(unrecorded=["multiprocessing.Process(target=train)"],
                        divergences=[Divergence("final.state", "at exit, module #0 (Linear) differs")]))
    assert both.status == "DIVERGED" and "target=train" in both.line
    # A hook that failed (here while recording) is named before a departure it may have caused.
    lost = decide(facts(hook_failures=["while recording: dl0.i0.w0: DataLoader worker batches: RuntimeError: x"],
                        mismatches=[Divergence("dl.batch", "DataLoader #0 epoch 0, batch 3: the recording has no "
                                               "such batch", step=2, check="event")],
                        divergences=[Divergence("step", "parameter 'fc.weight' differs", step=5)]))
    assert lost.status == "DIVERGED"
    assert "likely cause: a detrun hook failed (while recording: dl0.i0.w0" in lost.line, lost.line


def test_incomplete_recording_says_how_far_it_was_checked() -> None:
    line = decide(facts(trace_complete=False, trace_reason="killed by SIGTERM", steps=2120,
                        checks={"steps": 2120})).line
    assert line.startswith("REPRODUCED up to step 2120 of an incomplete recording (killed by SIGTERM)")
    empty = decide(facts(trace_complete=False, trace_reason="killed by SIGKILL", checks={}, steps=1))
    assert empty.status == "UNVERIFIED" and "the recording ended (killed by SIGKILL) before" in empty.line


def test_report_lists_every_divergence() -> None:
    found = facts(divergences=[Divergence("step", f"d{i}", step=i) for i in range(3)])
    data = report(found, decide(found))
    assert data["verdict"] == "DIVERGED" and [d["message"] for d in data["divergences"]] == ["d0", "d1", "d2"]  # type: ignore[index]
    assert "(+2 more" in str(data["line"])


def render(data: bytes) -> list[str]:
    lines = TerminalLines()
    lines.feed(data)
    lines.close()
    return lines.lines


def test_progress_bars_render_their_final_line_whatever_the_number_of_updates() -> None:
    fast = b"1/16 [=>...] - loss: 0.5\r6/16 [===>.] - loss: 0.4\r16/16 [=====] - 1s 12ms/step - loss: 0.3\n"
    slow = (b"1/16 [=>...] - loss: 0.5\r5/16 [==>..] - loss: 0.45\r10/16 [===>.] - loss: 0.41\r"
            b"16/16 [=====] - 2s 30ms/step - loss: 0.3\n")
    assert render(fast) == render(slow) == ["16/16 [=====] - … … - loss: 0.3"]
    assert render(b"\x1b[32mgreen\x1b[0m ok\rX\x1b[K\n") == ["X"]
    assert render(b"abc\bd\nno newline") == ["abd", "no newline"]


def test_the_mask_keeps_values_and_hides_durations_rates_and_addresses() -> None:
    assert mask_line("epoch 3 loss 0.1234 took 12.3s (45ms/step)") == "epoch 3 loss 0.1234 took … (…)"
    assert mask_line("100%|###| 10/10 [00:01<00:00,  9.52it/s]") == "100%|###| 10/10 […<…,  …]"
    assert mask_line("{'train_runtime': 1.5, 'train_loss': 0.69}") == "{'train_runtime': …, 'train_loss': 0.69}"
    assert mask_line("<Model object at 0x7f3a12345678> 2026-11-30 13:45:28") == "<Model object at …> …"
    # rich sizes its bar to what the times beside it leave of the console width.
    assert (mask_line("Epoch 2/2  ━━━━━━━━━━━━━━━━━━━━━━━ 8/8 0:00:01 • 0:00:00 12.30it/s")
            == mask_line("Epoch 2/2  ━━━━━━━━━━━━━━━━━━━━━━━━━ 8/8 0:00:00 • 0:00:00 9.80it/s")
            == "Epoch 2/2  … 8/8 … • … …")
    assert mask_line("3 steps, lr 1e-3") == "3 steps, lr 1e-3"
    assert mask_line("{'train_runtime': '0.2267', 'epoch': 1.0}") == "{'train_runtime': …, 'epoch': 1.0}"
    assert mask_line("loop_seconds 3.012345, elapsed 2.5") == "loop_seconds …, elapsed …"
    assert mask_line("step 12 loss 0.5 acc 0.9") == "step 12 loss 0.5 acc 0.9"
    assert mask_line("Epoch 2: 100%|##| 8/8 [loss=0.31, v_num=1]") == "Epoch 2: 100%|##| 8/8 [loss=0.31, v_num=…]"


def test_compare_names_the_first_differing_line_and_honours_extra_masks() -> None:
    import re

    recorded = {"lines": ["a", "loss 0.5", "run id 17"], "count": 3, "rest": 0}
    assert compare_lines(recorded, ["a", "loss 0.5", "run id 17"], 3, 0) is None
    message = compare_lines(recorded, ["a", "loss 0.6", "run id 17"], 3, 0)
    assert message is not None and message.startswith("stdout line 2 differs")
    assert compare_lines(recorded, ["a", "loss 0.5", "run id 18"], 3, 0, (re.compile(r"id \d+"),)) is None
    assert "printed 2 stdout lines" in str(compare_lines(recorded, ["a", "loss 0.5"], 2, 0))
