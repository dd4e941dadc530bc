"""The `op.digests` bytes and the comparison `detrun explain` makes of two captures."""
from __future__ import annotations

import pytest

from detrun.explain import Explanation, FirstOp, first_op_difference, knowledge_of, render
from detrun.trace.kernel_codec import StringTable
from detrun.trace.op_codec import (OpStep, decode_steps, describe_difference, encode_step, first_difference, fold64,
                                   op_key, skipped_step, split_key)
from detrun.trace.registry import KINDS, OP_DIGESTS
from detrun.trace.schema import SchemaError


def _step(step: int, digests: list[int], ops: list[str] | None = None, sites: list[str] | None = None) -> OpStep:
    keys = [op_key("aten::mm", "cpu"), op_key("aten::add.Tensor", "cpu"), op_key("aten::tanh", "cpu")]
    ops = ops or keys[:len(digests)]
    return OpStep(step, ops, digests, sites)


def test_steps_round_trip_through_a_growing_string_table() -> None:
    table = StringTable()
    first = encode_step(table, 1, ["aten::mm@cpu", "aten::add.Tensor@cpu"], [0xDEADBEEF, 7])
    second = encode_step(table, 2, ["aten::add.Tensor@cpu", "aten::mm@cpu", "aten::tanh@cpu"], [1, 2, 3], truncated=5)
    assert first["strings"] == ["aten::mm@cpu", "aten::add.Tensor@cpu"] and second["strings"] == ["aten::tanh@cpu"]
    for payload in (first, second, skipped_step(3, "the script's own dispatch mode was active")):
        KINDS[OP_DIGESTS].schema.check(payload)  # what the writer stores, the reader accepts
    steps = decode_steps([first, second, skipped_step(3, "why")])
    assert [(s.step, s.ops, s.digests, s.truncated) for s in steps[:2]] == [
        (1, ["aten::mm@cpu", "aten::add.Tensor@cpu"], [0xDEADBEEF, 7], 0),
        (2, ["aten::add.Tensor@cpu", "aten::mm@cpu", "aten::tanh@cpu"], [1, 2, 3], 5)]
    assert steps[2].skipped == "why" and steps[0].sites is None


def test_explain_captures_carry_call_sites_in_the_same_table() -> None:
    table = StringTable()
    payload = encode_step(table, 1, ["aten::mm@cpu", "aten::mm@cpu"], [1, 2], sites=["/a/train.py:3", "/a/train.py:3"])
    (step,) = decode_steps([payload])
    assert step.sites == ["/a/train.py:3", "/a/train.py:3"] and step.ops == ["aten::mm@cpu"] * 2


def test_a_step_whose_lists_disagree_is_refused() -> None:
    payload = encode_step(StringTable(), 1, ["aten::mm@cpu"], [1])
    payload["digests"] = encode_step(StringTable(), 1, ["a", "b"], [1, 2])["digests"]
    with pytest.raises(ValueError, match="1 ops but 2 digests"):
        decode_steps([payload])


def test_the_schema_refuses_bad_packing() -> None:
    payload = encode_step(StringTable(), 1, ["aten::mm@cpu"], [1])
    payload["digests"] = [4, b"\x00\x00\x00"]  # not a whole word
    with pytest.raises(SchemaError):
        KINDS[OP_DIGESTS].schema.check(payload)


def test_keys_and_folding() -> None:
    assert split_key(op_key("aten::add.Tensor", "cuda")) == ("aten::add.Tensor", "cuda")
    assert split_key("aten::mm") == ("aten::mm", "")
    assert fold64(0) == 0 and fold64(1 << 32) == 1 and fold64((1 << 64) + 5) == 5
    assert fold64(0x1234_5678_0000_0001) != fold64(0x1234_5678_0000_0002)  # one bit anywhere changes it


def test_first_difference_finds_a_digest_an_op_or_a_length() -> None:
    assert first_difference(_step(1, [1, 2, 3]), _step(1, [1, 2, 3])) is None
    assert first_difference(_step(1, [1, 2, 3]), _step(1, [1, 9, 3])) == 1
    other = _step(1, [1, 2, 3], ops=["aten::mm@cpu", "aten::sub.Tensor@cpu", "aten::tanh@cpu"])
    assert first_difference(_step(1, [1, 2, 3]), other) == 1
    assert first_difference(_step(1, [1, 2, 3]), _step(1, [1, 2])) == 2


def test_describe_names_the_op_its_site_and_both_digests() -> None:
    recorded, got = _step(3, [1, 2]), _step(3, [1, 0xABC], sites=["/w/train.py:12", "/w/train.py:13"])
    text = describe_difference(recorded, got, 1)
    assert text == ("the output of op #2 of step 3, aten::add.Tensor (cpu) at /w/train.py:13, differs from the "
                    "recording's (digest 00000002 there, 00000abc here)")
    assert "at /w" not in describe_difference(recorded, got, 1, with_site=False)
    assert "first missing is aten::add.Tensor (cpu)" in describe_difference(recorded, _step(3, [1]), 1)
    reordered = _step(3, [1, 2], ops=["aten::mm@cpu", "aten::sub.Tensor@cpu"])
    assert "(the ops ran in another order)" in describe_difference(recorded, reordered, 1)


def test_first_op_difference_takes_the_earliest_step_both_captured() -> None:
    reference = [_step(1, [1, 2, 3]), OpStep(2, [], [], skipped="why"), _step(3, [1, 2, 3])]
    got = [_step(1, [1, 2, 3]), _step(2, [5, 5, 5]), _step(3, [1, 2, 4], sites=["a:1", "a:2", "a:3"])]
    op = first_op_difference(reference, got, "the recording")
    assert op is not None and (op.step, op.index, op.name, op.device, op.site) == (3, 2, "aten::tanh", "cpu", "a:3")
    assert first_op_difference(reference, reference, "the recording") is None
    assert first_op_difference([], got, "the recording") is None  # nothing recorded: nothing to compare


def test_knowledge_names_a_known_nondeterministic_op_and_says_so_of_an_unknown_one() -> None:
    facts, patch = knowledge_of("aten::index_add_", "cuda")
    assert any("nondeterministic on cuda" in fact and "deterministic mode fixes it" in fact for fact in facts)
    assert patch is None  # deterministic mode covers it; detrun has no patch
    facts, patch = knowledge_of("aten::histc", "cuda")
    assert any("nondeterministic on cuda" in fact for fact in facts) and patch == "histc"
    facts, patch = knowledge_of("aten::add.Tensor", "cpu")
    assert patch is None and facts[0].startswith("no entry for aten::add on cpu")


def test_render_and_exit_codes() -> None:
    op = FirstOp(3, 0, "aten::add.Tensor@cpu", "/nowhere/train.py:12", "the output of op #1 of step 3 ... differs")
    explained = Explanation("nondeterministic op", "DIVERGED at step 3", 3, op, "the first replay",
                            knowledge=["no entry"], patch=None)
    lines = render(explained)
    assert lines[0] == "explain: the first op whose output differs is aten::add.Tensor on cpu, op #1 of step 3"
    assert "  at /nowhere/train.py:12" in lines and "  patch: none in detrun for this op" in lines
    assert explained.exit_code == 3 and explained.as_json()["op"]["index"] == 1
    assert Explanation("reproduced", "REPRODUCED").exit_code == 0
    assert Explanation("unverified", "UNVERIFIED").exit_code == 5
    assert Explanation("environment", "DIVERGED", 3).exit_code == 3
