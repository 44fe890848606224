"""FQL against Segment's own reference, "Destination Filter Query Language"
(https://segment.com/docs/api/public-api/fql/): every example of its tables with the result the table gives,
then what its operator and function tables say, then parse errors with their columns."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pipeline.wigzo.fql import FqlError, fql_type, parse

# The reference's example object ("Given the following JSON object")
EXAMPLE: dict[str, Any] = {
    "event": "Button Clicked",
    "type": "track",
    "context": {"library": {"name": "analytics.js", "version": "1.0"}},
    "properties": {"features": ["discounts", "dark-mode"]},
}


def evaluate(text: str, event: dict[str, Any] | None = None) -> Any:
    return parse(text).evaluate(EXAMPLE if event is None else event)


# "The following FQL statements will evaluate as follows": the reference's FQL | Result table, row by row
@pytest.mark.parametrize(("query", "result"), [
    ("event = 'Button Clicked'", True),
    ("event = 'Screen Tapped'", False),
    ("context.path.path = '/login'", False),
    ("type = 'identify' or type = 'track'", True),
    ("event = 'Button Clicked' and type = 'track'", True),
    ("match( context.library.version, '1.*' )", True),
    ("match( context.library.version, '2.*' )", False),
    ("type = 'track' and ( event = 'Click' or match( event, 'Button *' ) )", True),
    ("!contains( context.library.name, 'js' )", False),
    ("'dark-mode' in properties.features", True),
    ("'blink' in properties.features", False),
])
def test_the_references_examples(query: str, result: bool) -> None:
    assert parse(query).matches(EXAMPLE) is result
    assert evaluate(query) is result


# "Subexpressions": the reference gives no results, so these are worked out from its rules on the example object
@pytest.mark.parametrize(("query", "result"), [
    # match('Button *', event) takes the event name as the pattern: 'Button Clicked' does not match 'Button *'
    ("type = 'track' and ( event = 'Click' or match( 'Button *', event ) )", False),
    ("( type = 'track' or type = 'identify' ) and ( properties.enabled or match( traits.email, '*@company.com' ) )",
     False),
    ("!( type in ['track', 'identify'] )", False),
])
def test_the_references_subexpressions(query: str, result: bool) -> None:
    assert parse(query).matches(EXAMPLE) is result


def test_subexpressions_on_an_event_they_match() -> None:
    event = {"type": "identify", "traits": {"email": "ann@company.com"}}
    assert parse("( type = 'track' or type = 'identify' ) and ( properties.enabled or "
                 "match( traits.email, '*@company.com' ) )").matches(event)
    assert parse("!( type in ['track', 'page'] )").matches(event)


def test_escaped_field_paths() -> None:
    """"the nested field below can be referred to by `properties.product\\ 1.price`"."""
    event = {"properties": {"product 1": {"price": "19.99"}}}
    assert evaluate(r"properties.product\ 1.price", event) == "19.99"
    assert parse(r"properties.product\ 1.price = '19.99'").matches(event)
    assert evaluate(r"properties.a\.b", {"properties": {"a.b": 1, "a": {"b": 2}}}) == 1


def test_field_paths_reach_every_level_and_a_missing_field_is_null() -> None:
    assert evaluate("type") == "track"
    assert evaluate("context.library") == {"name": "analytics.js", "version": "1.0"}
    assert evaluate("context.library.name") == "analytics.js"
    assert evaluate("context.page.path") is None
    assert evaluate("event.name") is None  # a step through a string
    assert parse("context.page.path = null").matches(EXAMPLE)
    assert parse("user-agent = 'x'").matches({"user-agent": "x"})  # `-` belongs to a field name


# --- operators, as the reference's Boolean, Unary and Comparison tables describe them ------------------------------

BOOLEANS = {"t": True, "f": False, "n": None, "s": "yes"}


@pytest.mark.parametrize(("left", "right", "conjunction", "disjunction"), [
    ("t", "t", True, True),
    ("t", "f", False, True),
    ("f", "f", False, False),
    ("t", "n", False, True),
    ("n", "n", False, False),
    ("s", "t", False, True),  # not a bool: only `true` counts
])
def test_and_or(left: str, right: str, conjunction: bool, disjunction: bool) -> None:
    assert evaluate(f"{left} and {right}", BOOLEANS) is conjunction
    assert evaluate(f"{left} or {right}", BOOLEANS) is disjunction
    assert evaluate(f"{right} and {left}", BOOLEANS) is conjunction
    assert evaluate(f"{right} or {left}", BOOLEANS) is disjunction


def test_not_negates_and_is_written_bang_or_not() -> None:
    assert evaluate("!t", BOOLEANS) is False and evaluate("!f", BOOLEANS) is True
    assert evaluate("not t", BOOLEANS) is False and evaluate("not (f or f)", BOOLEANS) is True
    assert evaluate("!!t", BOOLEANS) is True
    assert evaluate("!n", BOOLEANS) is True  # null is not true
    assert evaluate("!a = 1", {"a": 1}) is False  # `!` covers the comparison after it


@pytest.mark.parametrize(("query", "result"), [
    # = : "true if the left and right side are the same type and are strictly equal"
    ("'a' = 'a'", True), ("1 = 1", True), ("1 = 1.0", True), ("1 = '1'", False), ("true = true", True),
    ("true = 1", False), ("null = null", True), ("null = false", False), ("[1, 'a'] = [1, 'a']", True),
    ("[1] = [true]", False), ("[1, 2] = [2, 1]", False), ("d = 1", False),
    # != : "true if the left and right side are different types or if they are not strictly equal"
    ("1 != '1'", True), ("'a' != 'a'", False), ("null != 0", True), ("[1] != [1]", False),
    # > >= < <= : numbers only
    ("2 > 1", True), ("1 > 1", False), ("1 >= 1", True), ("1 < 2", True), ("2 <= 1", False), ("-1.5 < 0", True),
    ("'b' > 'a'", False), ("null < 1", False), ("true > false", False),
    # in : "true if the left side is contained in the list of values"
    ("'a' in ['a', 'b']", True), ("3 in [1, 2]", False), ("null in [null]", True), ("true in [1]", False),
    ("1 in [1.0]", True), ("'a' in 'abc'", False), ("[1] in [[1]]", False),
])
def test_comparisons(query: str, result: bool) -> None:
    assert evaluate(query, {"d": {"x": 1}}) is result


@pytest.mark.parametrize(("query", "result"), [
    ("flag = 1", False), ("1 = flag", False), ("one = 1", True), ("1.0 = one", True), ("word = 'w'", True),
    ("'w' = word", True), ("one = '1'", False), ("word != 'w'", False), ("flag != 1", True),
    ("word in ['w', 'x']", True), ("one in ['1']", False), ("missing in ['w']", False), ("missing = 'w'", False),
])
def test_comparisons_with_a_literal_keep_types_strict(query: str, result: bool) -> None:
    """A field compared with a string or number literal (the usual filter) is as strict as any comparison."""
    assert evaluate(query, {"flag": True, "one": 1, "word": "w"}) is result


def test_objects_compare_by_content() -> None:
    event = {"a": {"x": 1, "y": [1, 2]}, "b": {"y": [1, 2], "x": 1}, "c": {"x": 1}}
    assert parse("a = b").matches(event) and parse("a != c").matches(event)


# --- functions: the reference's Functions table and its null defaults ------------------------------------------

@pytest.mark.parametrize(("query", "result"), [
    ("contains('abc', 'b')", True), ("contains('abc', 'd')", False), ("contains(1, '1')", False),
    ("length('abc')", 3), ("length('ア')", 3), ("length('a')", 1), ("length(['a', 'b'])", 2), ("length([])", 0),
    ("lowercase('AbC')", "abc"), ("uppercase('AbC')", "ABC"),
    ("snakecase('test string')", "test_string"), ("kebabcase('test string')", "test-string"),
    ("titlecase('test string')", "Test String"),
    ("typeof('a')", "string"), ("typeof(1)", "number"), ("typeof(1.5)", "number"), ("typeof([1])", "list"),
    ("typeof(true)", "bool"), ("typeof(null)", "null"), ("typeof(context)", "object"),
    ("bool(1)", True), ("bool(0)", False), ("bool('true')", True), ("bool('false')", False), ("bool('')", False),
    ("bool(null)", False), ("bool([])", False), ("bool(['a'])", True),
    ("string('a')", "a"), ("string(12)", "12"), ("string(1.5)", "1.5"), ("string(null)", "null"),
    ("string(['a'])", '["a"]'),
    ("number(3)", 3), ("number('3')", 3), ("number('-2.5')", -2.5), ("number('x')", None), ("number(null)", None),
    # the null defaults table
    ("contains( null, 'a' )", False), ("length( null )", 0), ("lowercase( null )", None),
    ("typeof( null )", "null"), ("match( null, '*' )", False),
])
def test_functions(query: str, result: Any) -> None:
    value = evaluate(query, {"context": {"a": 1}})
    assert value == result and fql_type(value) == fql_type(result)


def test_length_of_what_has_none_compares_false() -> None:
    assert math.isnan(evaluate("length(1)"))
    assert not parse("length(context) > 0").matches(EXAMPLE) and not parse("length(context) <= 0").matches(EXAMPLE)


def test_the_references_null_shortcut() -> None:
    """"you can write `length( userId ) > 0` instead of `typeof( userId ) = 'string' and length( userId ) > 0`"."""
    assert not parse("length( userId ) > 0").matches({})
    assert parse("length( userId ) > 0").matches({"userId": "u1"})
    assert parse("length( userId ) < 1").matches({"userId": ""})  # the Destination Filters page's example


def test_functions_nest_and_compare() -> None:
    event = {"traits": {"email": "Ann@Company.COM"}, "event": "Order Completed"}
    assert parse("contains(lowercase(traits.email), '@company.com')").matches(event)
    assert parse("lowercase(event) = 'order completed'").matches(event)
    assert parse("typeof(traits.email) = 'string' and length(traits.email) > 5").matches(event)


def test_a_value_alone_matches_only_when_it_is_true() -> None:
    assert parse("properties.enabled").matches({"properties": {"enabled": True}})
    assert not parse("properties.enabled").matches({"properties": {"enabled": "true"}})
    assert not parse("lowercase(event)").matches(EXAMPLE)


# --- match(): the reference's glob tables -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "pattern", "result"), [
    ("abcd", "a*d", True),
    ("", "*", True),
    ("abc", "ab", False),
    ("abcd", "a??d", True),
    ("abcd", "*d", True),
    ("ab*d", r"ab\*d", True),
    ("abCd", "ab[cC]d", True),
    ("abcd", "ab[a-z]d", True),
    ("abcd", "ab[A-Z]d", False),
])
def test_match_the_references_glob_examples(text: str, pattern: str, result: bool) -> None:
    assert parse(f"match( '{text}', '{pattern}' )").matches({}) is result
    assert parse("match( s, p )").matches({"s": text, "p": pattern}) is result  # a pattern from the event


@pytest.mark.parametrize(("text", "pattern", "result"), [
    ("abc", "a?c", True), ("ac", "a?c", False), ("ABC", "abc", False),  # one character; case sensitive
    ("ab/c", "a*", True), ("a\nb", "a*b", True),  # no separator: `*` crosses `/` and newlines
    ("abd", "ab[^c]", True), ("abc", "ab[^c]", False), ("a]", r"a[\]]", True), ("a.c", "a.c", True),
    ("axc", "a.c", False), ("a+c", "a+c", True), ("x", "[", False), ("x", "[]", False), ("x", "x\\", False),
])
def test_match_classes_escapes_and_malformed_patterns(text: str, pattern: str, result: bool) -> None:
    assert parse("match( s, p )").matches({"s": text, "p": pattern}) is result


# --- parse errors say where -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "column", "problem"), [
    ("userId = oops\"", 14, "has no closing"),  # the reference's own example of invalid FQL
    ("type = 'track' and", 19, "expected a value"),
    ("type = 'track' and )", 20, "expected a value"),
    ("( type = 'track'", 17, "expected ')' to close the '(' at column 1"),
    ("type = 'track' event = 'x'", 16, "expected and, or or the end"),
    ("type = 'track' or @", 19, "unexpected character '@'"),
    ("lower(event) = 'x'", 1, "unknown function 'lower'"),
    ("contains(event)", 1, "contains() takes 2 arguments, found 1"),
    ("event in ['a' 'b']", 15, "expected ',' or ']'"),
    ("context. = 1", 10, "a field name after '.'"),
    ("", 1, "empty"),
])
def test_parse_errors_name_the_column(query: str, column: int, problem: str) -> None:
    with pytest.raises(FqlError) as error:
        parse(query)
    assert error.value.column == column, str(error.value)
    assert problem in error.value.problem
    assert str(error.value).startswith(f"column {column}: ")


def test_a_query_over_segments_5_kb_limit_is_refused() -> None:
    with pytest.raises(FqlError, match="5 KB"):
        parse("event = '" + "x" * 5200 + "'")
