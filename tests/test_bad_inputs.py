"""Every bad input in tests/bad_inputs.py raises a clear error, and tests/BAD_INPUTS.md lists what each gives."""

from __future__ import annotations

import pytest

import bad_inputs


@pytest.mark.parametrize("function,what,call,expected,words", bad_inputs.CASES,
                         ids=[f"{case[0]}: {case[1]}" for case in bad_inputs.CASES])
def test_bad_input_raises_a_clear_error(function, what, call, expected, words):
    kind, message = bad_inputs.outcome(call)
    assert kind != "no error", f"{function} accepted {what}"
    assert kind == expected.__name__, f"{function} with {what}: {kind}: {message}"
    missing = [w for w in words if w not in message]
    assert not missing, f"{function} with {what}: the message does not name {missing}: {message}"


def test_the_table_is_up_to_date():
    """Same cases, same error types, and word for word the same messages where they are fastffnn's own
    (torch's own wording, e.g. load_state_dict's, may change between torch versions)."""
    written = bad_inputs.TABLE.read_text().splitlines()
    current = bad_inputs.table().splitlines()
    assert len(written) == len(current), "run: python tests/bad_inputs.py"
    for old, new in zip(written, current):
        if old == new:
            continue
        old_cells, new_cells = old.split(" | "), new.split(" | ")
        assert old_cells[:3] == new_cells[:3], f"run: python tests/bad_inputs.py\n{old}\n{new}"
        assert "fastffnn" not in old_cells[3] and "fastffnn" not in new_cells[3], f"{old}\n{new}"
