from __future__ import annotations

import json

import pytest

from promptcls import Template, TemplateError
from promptcls.template import Field, Mask, Soft, Text


def test_parts_and_fields():
    t = Template("{text} It was [MASK].")
    assert t.fields == ("text",)
    assert t.segments == ((Field("text"), Text(" It was "), Mask(), Text(".")),)
    assert not t.is_pair and not t.has_soft_tokens


def test_soft_slots():
    t = Template("[SOFT] {text} [SOFT*4] [SOFT:it was] [MASK]")
    assert t.soft_slots == (Soft(1), Soft(4), Soft(None, "it was"))


def test_pair_splits_at_second_field():
    t = Template("{premise} ? [MASK] , {hypothesis}")
    assert t.is_pair
    assert t.segments[1] == (Field("hypothesis"),)
    rendered = t.render({"premise": "A", "hypothesis": "B"}, mask_token="<mask>")
    assert [r.text for r in rendered] == ["A ? <mask> ,", "B"]  # no space left at the boundary


def test_explicit_sep():
    t = Template("{premise} ?[SEP][MASK] , {hypothesis}")
    assert [r.text for r in t.render({"premise": "A", "hypothesis": "B"}, "[MASK]")] == ["A ?", "[MASK] , B"]


def test_render_spans_and_multi_mask():
    t = Template("{text} was [MASK] [SOFT*2]")
    (seg,) = t.render({"text": "food"}, mask_token="<m>", n_mask=2)
    assert seg.text == "food was <m><m> <m><m>"
    assert [(s.kind, seg.text[s.start : s.end]) for s in seg.spans] == [
        ("field", "food"),
        ("mask", "<m><m>"),
        ("soft", "<m><m>"),
    ]


def test_escapes():
    t = Template(r"\[note\] \{x\} {text} \\ [MASK]")
    (seg,) = t.render({"text": "hi"}, "M")
    assert seg.text == r"[note] {x} hi \ M"


@pytest.mark.parametrize(
    "source, message",
    [
        ("{text} It was.", "exactly one [MASK]"),
        ("{text} [MASK] [MASK]", "exactly one [MASK]"),
        ("{text [MASK]", "position 0"),
        ("{text} [MASKS]", "position 7: unknown slot '[MASKS]'"),
        ("{1abc} [MASK]", "not a field name"),
        ("{text} [MASK] }", "position 14: unmatched '}' (write \\} for a literal)"),
        ("[MASK] only", "at least one {field}"),
        ("{a} [SEP] {b} [SEP] {c} [MASK]", "at most two segments"),
        ("{text} [SOFT:] [MASK]", "needs words"),
        ("{text} [SOFT*0] [MASK]", "at least one token"),
        ("{text} \\x [MASK]", "backslash"),
    ],
)
def test_parse_errors_name_the_problem(source, message):
    with pytest.raises(TemplateError) as err:
        Template(source)
    assert message in str(err.value)


def test_prompt_encoder_needs_soft_tokens():
    with pytest.raises(TemplateError, match="has none"):
        Template("{text} [MASK]", prompt_encoder="lstm")
    with pytest.raises(ValueError, match="prompt_encoder='gru' is not one of"):
        Template("{text} [SOFT] [MASK]", prompt_encoder="gru")


def test_json_round_trip():
    t = Template("[SOFT*2] {text} \\[x\\] [MASK].", prompt_encoder="mlp")
    back = Template.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and back.segments == t.segments and back.prompt_encoder.value == "mlp"


def test_render_rejects_missing_and_non_string():
    t = Template("{text} [MASK]")
    with pytest.raises(ValueError, match="missing"):
        t.render({"text": None}, "M")
    with pytest.raises(TypeError, match="must be a string"):
        t.render({"text": 3}, "M")
