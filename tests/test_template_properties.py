"""Property-based tests of the template parser: any string parses and round-trips, or is refused with a position."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from promptcls.template import Field, Mask, Soft, Template, TemplateError, Text

PIECES = [
    "{", "}", "[", "]", "\\", "*", ":", " ", ".", "?", "MASK", "SOFT", "SEP", "SOFT*", "SOFT:", "text", "a", "b",
    "0", "1", "12", "{text}", "{a}", "[MASK]", "[SOFT]", "[SOFT*3]", "[SOFT:it was]", "[SEP]", "\\[", "\\]", "\\{",
    "\\}", "\\\\", "é", "\n", "\t", "٣",
]
templates = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=40),
)


@settings(max_examples=1500, deadline=None)
@given(templates, st.sampled_from(["none", "lstm", "mlp"]))
def test_parses_and_round_trips_or_names_a_position(source, encoder):
    try:
        t = Template(source, prompt_encoder=encoder)
    except TemplateError as e:
        assert isinstance(e.position, int) and 0 <= e.position <= len(source), (source, e.position)
        assert f"template position {e.position}" in str(e)
        return
    again = Template.from_dict(t.to_dict())
    assert again == t and again.segments == t.segments and again.fields == t.fields
    parts = [p for seg in t.segments for p in seg]
    assert sum(isinstance(p, Mask) for p in parts) == 1
    assert t.fields and all(isinstance(p, (Text, Field, Mask, Soft)) for p in parts)
    # rendering a row of plain values puts exactly one answer slot and each field value in place
    row = {f: f"<{f}>" for f in t.fields}
    rendered = t.render(row, mask_token="\x00", n_mask=2)
    text = "".join(seg.text for seg in rendered)
    soft = sum(s.count or 1 for s in t.soft_slots)
    assert text.count("\x00") == 2 + soft
    assert all(f"<{f}>" in text for f in t.fields)


def test_error_positions_point_at_the_problem():
    cases = {
        "{text} [MASK] [MASK]": 14,  # the second mask
        "{text} It was.": len("{text} It was."),  # no mask: the end
        "{a} [SEP] {b} [SEP] {c} [MASK]": 14,  # the second [SEP]
        "{text} [BOGUS] [MASK]": 7,
        "{text [MASK]": 0,
        "{text} [MASK] \\x": 14,
    }
    for source, pos in cases.items():
        try:
            Template(source)
        except TemplateError as e:
            assert e.position == pos, (source, e.position, str(e))
        else:
            raise AssertionError(f"{source!r} parsed")
