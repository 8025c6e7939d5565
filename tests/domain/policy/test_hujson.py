"""HuJSON parsing and policy validation errors (line/column, reasons), plus property tests."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioscale.shared.domain.policy import Policy, PolicyError
from trioscale.shared.domain.policy.hujson import loads


def test_comments_and_trailing_commas() -> None:
    text = """
    // a line comment
    {
      /* a block
         comment */
      "groups": {"group:a": ["a@example.com",],},  // trailing commas
      "acls": [
        {"action": "accept", "src": ["*"], "dst": ["*:*"],},
      ],
    }
    """
    assert loads(text) == {
        "groups": {"group:a": ["a@example.com"]},
        "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
    }


def test_comment_markers_inside_strings_are_text() -> None:
    assert loads('{"a": "// not a comment /* nor this */"}') == {"a": "// not a comment /* nor this */"}


@pytest.mark.parametrize(
    "text, line, column, reason",
    [
        ('{\n  "a": [1,,2]\n}', 2, 11, "looking for beginning of value"),
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "after object value"),
        ('{"a": "unterminated', 1, 7, "unterminated string"),
        ("{\n/* open comment", 2, 1, "unterminated /* comment"),
        ('{"a": 1} x', 1, 10, "after top-level value"),
        ('{"a": 1, "a": 2}', 1, 10, "duplicate key"),
        ("", 1, 1, "unexpected end of input"),
    ],
)
def test_syntax_errors_have_line_and_column(text: str, line: int, column: int, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        loads(text)
    assert (info.value.line, info.value.column) == (line, column)
    assert reason in info.value.message


def test_policy_parse_reports_position_of_syntax_error() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.parse('{\n  "acls": [\n    {"action": "accept" "src": []}\n  ]\n}')
    assert info.value.line == 3


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"acls": [{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}]}, 'src=tag not found: "tag:nope"'),
        ({"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}, 'action="deny" is not supported'),
        (
            {"tagOwners": {"tag:s": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["tag:s:ssh"]}]},
            'port range "ssh": invalid first integer',
        ),
        (
            {"acls": [{"action": "accept", "src": ["autogroup:self"], "dst": ["*:*"]}]},
            '"autogroup:self" not valid on the src side of a rule',
        ),
        ({"acls": [{"action": "accept", "src": ["group:x"], "dst": ["*:*"]}]}, "group:x"),
        ({"grants": [{"src": ["*"], "dst": ["*"]}]}, "ip and app can not both be empty"),
        ({"ssh": [{"action": "accept", "src": ["*"], "dst": ["autogroup:self"], "users": []}]}, "users must be specified"),
        ({"bogus": 1}, 'unknown field "bogus"'),
    ],
)
def test_validation_errors(policy: dict, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.parse(json.dumps(policy))
    assert message in info.value.message


def test_valid_policy_parses() -> None:
    p = Policy.parse(
        '{"groups": {"group:a": ["a@example.com"]}, "tagOwners": {"tag:s": ["group:a"]},'
        ' "acls": [{"action": "accept", "src": ["group:a"], "dst": ["tag:s:22,80-90", "10.0.0.0/8:*"]}]}'
    )
    assert len(p.parsed.rules) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values)
def test_round_trips_plain_json(value: object) -> None:
    assert loads(json.dumps(value)) == value


@settings(max_examples=500)
@given(st.text())
def test_arbitrary_text_raises_only_policy_error(text: str) -> None:
    try:
        loads(text)
    except PolicyError as exc:
        assert exc.line is not None and exc.line >= 1 and exc.column >= 1


@settings(max_examples=300)
@given(st.text(alphabet='{}[]":,/*\n tagrpsc-_0123456789@.'))
def test_arbitrary_policy_text_raises_only_policy_error(text: str) -> None:
    try:
        Policy.parse(text)
    except PolicyError:
        pass


@settings(max_examples=200)
@given(json_values)
def test_arbitrary_policy_documents_raise_only_policy_error(value: object) -> None:
    try:
        Policy.parse(json.dumps({"acls": [value], "groups": {"group:a": [value]}}))
    except PolicyError:
        pass
