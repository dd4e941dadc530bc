"""The kernel codec: the string table, a step's kernels through a real trace, and the difference message."""
from __future__ import annotations

from pathlib import Path

from detrun.trace.kernel_codec import (MAX_LAUNCHES, StepKernels, StringTable, decode_steps, describe_difference,
                                       encode_step, first_difference, skipped_step)


def test_string_table_hands_out_only_new_strings() -> None:
    table = StringTable()
    assert table.encode(["a", "b", "a"]) == (["a", "b"], [0, 1, 0])
    assert table.encode(["b", "c"]) == (["c"], [1, 2])
    decoder = StringTable()
    decoder.extend(["a", "b"])
    decoder.extend(["c"])
    assert decoder.decode([2, 0, 1, 9]) == ["c", "a", "b", "?"]


def test_kernel_steps_survive_the_trace(tmp_path: Path) -> None:
    from detrun.trace import TraceWriter, read_trace

    table = StringTable()
    step1 = [("sm90_xmma_gemm_tf32", "aten::mm"), ("vectorized_elementwise_kernel", "aten::add_")] * 300
    step2 = [("sm90_xmma_gemm_tf32", "aten::mm"), ("reduce_kernel", "aten::sum")]
    writer = TraceWriter(str(tmp_path / "t.partial"), {"settings": {}})
    for payload in (encode_step(table, 1, step1), encode_step(table, 2, step2), skipped_step(3, "busy")):
        writer.event("kernels", payload)
    writer.close({"complete": True, "exit_status": 0, "steps": 3})
    payloads = read_trace(str(tmp_path / "t.partial")).of("kernels")
    assert payloads[1]["strings"] == ["reduce_kernel", "aten::sum"]  # only what step 1 did not bring
    steps = decode_steps(payloads)
    assert [list(zip(s.kernels, s.ops)) for s in steps[:2]] == [step1, step2]
    assert steps[2].skipped == "busy" and steps[2].kernels == []


def test_first_difference_and_its_message() -> None:
    assert first_difference(["a", "b"], ["a", "b"]) is None
    assert first_difference(["a", "b"], ["a", "c"]) == 1
    assert first_difference(["a", "b"], ["a"]) == 1
    assert first_difference([], ["x"]) == 0
    recorded = StepKernels(1, ["gemm_tf32", "bn_fw"], ["aten::mm", "aten::cudnn_batch_norm"])
    assert describe_difference(recorded, StepKernels(1, list(recorded.kernels), list(recorded.ops))) is None
    other = StepKernels(1, ["gemm_f32", "bn_fw"], ["aten::mm", "aten::cudnn_batch_norm"])
    assert describe_difference(recorded, other) == ("CUDA kernel #1 of step 1 is 'gemm_f32' (launched by aten::mm), "
                                                    "but the recording has 'gemm_tf32' (launched by aten::mm)")
    shorter = StepKernels(1, ["gemm_tf32"], ["aten::mm"])
    assert describe_difference(recorded, shorter) == ("step 1 launched 1 CUDA kernels, the recording 2; the first "
                                                      "missing is 'bn_fw' (launched by aten::cudnn_batch_norm)")


def test_plain_id_lists_decode_and_long_steps_are_cut() -> None:
    # Ids as plain lists still decode: what a trace written without packed ids holds.
    steps = decode_steps([{"step": 1, "strings": ["k", "aten::mm"], "kernels": [0, 0], "ops": [1, 1]}, "junk"])
    assert [(s.step, s.kernels, s.ops) for s in steps] == [(1, ["k", "k"], ["aten::mm", "aten::mm"])]
    payload = encode_step(StringTable(), 1, [("k", "op")] * (MAX_LAUNCHES + 3))
    assert payload["truncated"] == 3 and len(decode_steps([payload])[0].kernels) == MAX_LAUNCHES
