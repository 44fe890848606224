"""Segment's Filter Query Language (FQL): the `if` of a destination filter, parsed once and evaluated per event.

Written from Segment's reference, "Destination Filter Query Language"
(https://segment.com/docs/api/public-api/fql/, now https://www.twilio.com/docs/segment/api/public-api/fql), and,
where the reference is silent, from Segment's own JavaScript evaluator of the same filters (segmentio/tsub-js,
`matchers.ts`) and lexer (segmentio/fql-ts). What it covers:

- operators `=` `!=` (same type and strictly equal), `<` `<=` `>` `>=` (numbers only, else false), `in` (a value
  in a list), `and`, `or`, `!` (also written `not`), parentheses;
- dotted field paths into the event (`context.library.version`), a field name's other characters escaped with
  `\\` (`properties.product\\ 1.price`); a missing field is `null`;
- literals: strings in single or double quotes (no escapes inside, as in Segment's lexer), numbers, `null`,
  `true`, `false`, lists `['track', 'identify']`;
- the functions `contains`, `match` (glob), `length`, `lowercase`, `uppercase`, `snakecase`, `kebabcase`,
  `titlecase`, `typeof`, `bool`, `string`, `number`, with the reference's null defaults (`contains(null, s)` is
  false, `length(null)` is 0, `lowercase(null)` is null, `typeof(null)` is "null", `match(null, s)` is false).

Evaluation is pure and never raises: a value of the wrong type makes a comparison or function false (or null),
as Segment's evaluator does, and only a result of exactly `true` matches. A query is compiled into nested
closures when it is parsed, so evaluating one costs a few function calls, not a walk over a syntax tree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

Evaluator = Callable[[dict[str, Any]], Any]  # the event -> an FQL value: str, int/float, bool, None, list, dict

KEYWORDS = {"and", "or", "not", "in", "null", "true", "false"}
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=", "in")
MAX_QUERY_BYTES = 5 * 1024  # "FQL queries are limited to 5 KB each" (Segment's filtering guide)


class FqlError(ValueError):
    """An FQL expression that does not parse; `column` (1-based) is where in it the problem is."""

    def __init__(self, column: int, problem: str) -> None:
        super().__init__(f"column {column}: {problem}")
        self.column = column
        self.problem = problem


# --- tokens -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "ident", "string", "number", "op", "keyword", "(", ")", "[", "]", ",", ".", "end"
    text: str  # an identifier with its escapes resolved, a string without its quotes, the operator...
    column: int  # 1-based, where the token starts


_IDENT_START = re.compile(r"[A-Za-z_\\]")
_IDENT_PART = re.compile(r"[A-Za-z0-9_\-\\]")
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
_OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "!")


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`, ending with an "end" token; FqlError at the first character that cannot start one."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        column = position + 1
        if char.isspace():
            position += 1
        elif char in "()[],.":
            tokens.append(Token(char, char, column))
            position += 1
        elif char in "'\"":
            end = text.find(char, position + 1)
            if end < 0:
                raise FqlError(column, f"the string that starts here has no closing {char}")
            tokens.append(Token("string", text[position + 1:end], column))
            position = end + 1
        elif number := _NUMBER.match(text, position):
            tokens.append(Token("number", number[0], column))
            position = number.end()
        elif _IDENT_START.match(char):
            name, position = _identifier(text, position)
            tokens.append(Token("keyword" if name in KEYWORDS else "ident", name, column))
        elif operator := next((op for op in _OPERATORS if text.startswith(op, position)), None):
            tokens.append(Token("op", operator, column))
            position += len(operator)
        else:
            raise FqlError(column, f"unexpected character {char!r}")
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def _identifier(text: str, position: int) -> tuple[str, int]:
    """A field name or function name; `\\` makes the next character (a space, a dot...) part of it."""
    name: list[str] = []
    while position < len(text) and _IDENT_PART.match(text[position]):
        if text[position] == "\\":
            if position + 1 == len(text):
                raise FqlError(position + 1, "a \\ at the end: it escapes the character after it, and there is none")
            position += 1
        name.append(text[position])
        position += 1
    return "".join(name), position


# --- values, as FQL types them ------------------------------------------------------------------------------

def fql_type(value: Any) -> str:
    """The reference's types: string, number, list, bool, null; and object for a JSON object."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def strictly_equal(left: Any, right: Any) -> bool:
    """`=`: the same type and equal; lists and objects element by element (Python's `1 == True` is not)."""
    kind = fql_type(left)
    if kind != fql_type(right):
        return False
    if kind == "list":
        return len(left) == len(right) and all(strictly_equal(a, b) for a, b in zip(left, right, strict=True))
    if kind == "object":
        return left.keys() == right.keys() and all(strictly_equal(left[key], right[key]) for key in left)
    return bool(left == right)


# --- glob matching --------------------------------------------------------------------------------------------

def glob_regex(pattern: str) -> re.Pattern[str] | None:
    """The pattern as a regular expression matching the whole string, or None for a malformed pattern (which
    matches nothing). Segment's globs (github.com/segmentio/glob) are Go's path.Match without a separator:
    `*` any run of characters, `?` one character, `[abc]` `[a-z]` `[^a-z]` a class, `\\x` the character x."""
    parts = ["(?s:"]
    position = 0
    while position < len(pattern):
        char = pattern[position]
        position += 1
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif char == "\\":
            if position == len(pattern):
                return None
            parts.append(re.escape(pattern[position]))
            position += 1
        elif char == "[":
            klass, position = _glob_class(pattern, position)
            if klass is None:
                return None
            parts.append(klass)
        else:
            parts.append(re.escape(char))
    parts.append(")")
    return re.compile("".join(parts))


def _glob_class(pattern: str, position: int) -> tuple[str | None, int]:
    """`[...]` from just after its `[`: ranges and characters (a `\\` escapes one), `^` first negates."""
    negated = position < len(pattern) and pattern[position] == "^"
    position += negated
    items: list[str] = []
    while True:
        if position < len(pattern) and pattern[position] == "]" and items:
            return f"[{'^' if negated else ''}{''.join(items)}]", position + 1
        low, position = _glob_class_char(pattern, position)
        if low is None:
            return None, position
        high = low
        if position < len(pattern) and pattern[position] == "-":
            high, position = _glob_class_char(pattern, position + 1)
            if high is None or high < low:
                return None, position
        items.append(re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}")


def _glob_class_char(pattern: str, position: int) -> tuple[str | None, int]:
    if position >= len(pattern) or pattern[position] in "-]":
        return None, position
    if pattern[position] == "\\":
        position += 1
        if position >= len(pattern):
            return None, position
    return pattern[position], position + 1


_glob_cached = lru_cache(maxsize=256)(glob_regex)  # for patterns that come from the event, not the query


def _match(text: Any, pattern: Any, compiled: re.Pattern[str] | None = None) -> bool:
    if not isinstance(text, str) or not isinstance(pattern, str):
        return False
    regex = compiled or _glob_cached(pattern)
    return regex is not None and regex.fullmatch(text) is not None


# --- functions ----------------------------------------------------------------------------------------------

def _contains(text: Any, part: Any) -> bool:
    return isinstance(text, str) and isinstance(part, str) and part in text


def _length(value: Any) -> int | float:
    """Elements of a list, or bytes of a string (UTF-8: `ア` is 3); 0 for null; NaN (compares false) otherwise."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return len(value)
    return math.nan


def _text_function(change: Callable[[str], str]) -> Callable[[Any], str | None]:
    """lowercase and its kind: a string changed, anything else null (`lowercase(null)` is null)."""
    return lambda value: change(value) if isinstance(value, str) else None


def _titlecase(text: str) -> str:
    """`titlecase("test string")` is "Test String": each space-separated word's first letter upper-cased."""
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


_TRUE_TEXTS = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # what Go's strconv.ParseBool reads as true


def _to_bool(value: Any) -> bool:
    """bool(): not specified further by the reference. Ours: null false, a number true unless 0, a list true
    unless empty, a string true when Go's ParseBool (Segment's evaluators are Go) reads it so ("true", "1")."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if _number(value):
        return value != 0
    if isinstance(value, str):
        return value in _TRUE_TEXTS
    return bool(value)


def _to_string(value: Any) -> str:
    """string(): a string as it is, anything else as its JSON text (`string(12)` is "12", `string(null)` "null")."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _to_number(value: Any) -> int | float | None:
    """number(): a number as it is, a string holding a number as that number, anything else null."""
    if _number(value):
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return _parse_number(value)
    return None


FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {  # name -> (arguments, implementation)
    "contains": (2, _contains),
    "match": (2, _match),
    "length": (1, _length),
    "lowercase": (1, _text_function(str.lower)),
    "uppercase": (1, _text_function(str.upper)),
    "snakecase": (1, _text_function(lambda text: text.replace(" ", "_"))),
    "kebabcase": (1, _text_function(lambda text: text.replace(" ", "-"))),
    "titlecase": (1, _text_function(_titlecase)),
    "typeof": (1, fql_type),
    "bool": (1, _to_bool),
    "string": (1, _to_string),
    "number": (1, _to_number),
}


def _parse_number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


# --- the parser: recursive descent, each rule returning the closure that evaluates it ----------------------------

def _compare(operator: str, left: Evaluator, right: Evaluator) -> Evaluator:
    if operator in ("=", "!="):
        equal = _equal_to_constant(left, right) or _equal_to_constant(right, left)
        if equal is None:
            def equal(event: dict[str, Any]) -> bool:
                return strictly_equal(left(event), right(event))
        if operator == "!=":
            same = equal
            return lambda event: not same(event)
        return equal
    if operator == "in":
        strings = _constant_strings(right)
        if strings is not None:  # `type in ['track', 'identify']`: a set lookup
            return lambda event: (value := left(event)).__class__ is str and value in strings
        def contained(event: dict[str, Any]) -> bool:
            item, items = left(event), right(event)
            return (fql_type(item) in ("string", "number", "bool", "null") and isinstance(items, list)
                    and any(strictly_equal(item, candidate) for candidate in items))
        return contained
    order: Callable[[Any, Any], bool] = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
                                         ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}[operator]

    def ordered(event: dict[str, Any]) -> bool:
        a, b = left(event), right(event)
        return _number(a) and _number(b) and order(a, b)
    return ordered


def _equal_to_constant(side: Evaluator, constant: Evaluator) -> Evaluator | None:
    """`event = 'Order Completed'`, the usual comparison, without the general type dispatch; None when
    `constant` is not a string or a number."""
    if not getattr(constant, "constant", False):
        return None
    expected = constant({})
    if isinstance(expected, str):
        return lambda event: (value := side(event)).__class__ is str and value == expected
    if _number(expected):
        return lambda event: _number(value := side(event)) and value == expected
    return None


def _constant_strings(items: Evaluator) -> frozenset[str] | None:
    if not getattr(items, "constant", False):
        return None
    values = items({})
    if isinstance(values, list) and all(isinstance(value, str) for value in values):
        return frozenset(values)
    return None


def path_getter(keys: Sequence[str]) -> Evaluator:
    """The value at a dotted path of the event, null where any step is missing or not an object."""
    if len(keys) == 1:
        (key,) = keys
        return lambda event: event.get(key)
    keys = tuple(keys)

    def get(event: dict[str, Any]) -> Any:
        value: Any = event
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value
    return get


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.position = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.position]

    def advance(self) -> Token:
        token = self.token
        self.position += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        return self.token.kind == kind and (text is None or self.token.text == text)

    def expect(self, kind: str, what: str, opened: Token | None = None) -> Token:
        if not self.at(kind):
            to_close = f" to close the {opened.text!r} at column {opened.column}" if opened else ""
            raise FqlError(self.token.column, f"expected {what}{to_close}, found {_shown(self.token)}")
        return self.advance()

    def query(self) -> Evaluator:
        evaluator = self.disjunction()
        if not self.at("end"):
            raise FqlError(self.token.column, f"expected and, or or the end, found {_shown(self.token)}")
        return evaluator

    def disjunction(self) -> Evaluator:
        terms = [self.conjunction()]
        while self.at("keyword", "or"):
            self.advance()
            terms.append(self.conjunction())
        if len(terms) == 1:
            return terms[0]
        if len(terms) == 2:  # the usual case, without a generator per event
            first, second = terms
            return lambda event: first(event) is True or second(event) is True
        return lambda event: any(term(event) is True for term in terms)

    def conjunction(self) -> Evaluator:
        terms = [self.negation()]
        while self.at("keyword", "and"):
            self.advance()
            terms.append(self.negation())
        if len(terms) == 1:
            return terms[0]
        if len(terms) == 2:
            first, second = terms
            return lambda event: first(event) is True and second(event) is True
        return lambda event: all(term(event) is True for term in terms)

    def negation(self) -> Evaluator:
        if self.at("op", "!") or self.at("keyword", "not"):
            self.advance()
            negated = self.negation()
            return lambda event: negated(event) is not True
        return self.comparison()

    def comparison(self) -> Evaluator:
        left = self.value()
        if (self.token.kind == "op" and self.token.text in COMPARISONS) or self.at("keyword", "in"):
            operator = self.advance().text
            return _compare(operator, left, self.value())
        return left

    def value(self) -> Evaluator:
        token = self.token
        if token.kind == "string":
            self.advance()
            return _constant(token.text)
        if token.kind == "number":
            self.advance()
            return _constant(_parse_number(token.text))
        if token.kind == "keyword" and token.text in ("null", "true", "false"):
            self.advance()
            return _constant({"null": None, "true": True, "false": False}[token.text])
        if token.kind == "(":
            self.advance()
            inner = self.disjunction()
            self.expect(")", "')'", opened=token)
            return inner
        if token.kind == "[":
            return self.list_literal()
        if token.kind == "ident":
            self.advance()
            if self.at("("):
                return self.call(token)
            keys = [token.text]
            while self.at("."):
                self.advance()
                keys.append(self.expect("ident", "a field name after '.'").text)
            return path_getter(keys)
        raise FqlError(token.column, f"expected a value (a field, a string, a number, null, true, false, a list, "
                                     f"a function or '('), found {_shown(token)}")

    def list_literal(self) -> Evaluator:
        opened = self.advance()
        items: list[Evaluator] = []
        while not self.at("]"):
            if items:
                self.expect(",", "',' or ']'", opened=opened)
            items.append(self.value())
        self.advance()
        if all(getattr(item, "constant", False) for item in items):
            return _constant([item({}) for item in items])
        return lambda event: [item(event) for item in items]

    def call(self, name: Token) -> Evaluator:
        known = FUNCTIONS.get(name.text)
        if known is None:
            raise FqlError(name.column, f"unknown function {name.text!r}; FQL has {', '.join(FUNCTIONS)}")
        arity, function = known
        opened = self.advance()
        arguments: list[Evaluator] = []
        while not self.at(")"):
            if arguments:
                self.expect(",", "',' or ')'", opened=opened)
            arguments.append(self.disjunction())
        self.advance()
        if len(arguments) != arity:
            raise FqlError(name.column, f"{name.text}() takes {arity} argument{'s' if arity > 1 else ''}, "
                                        f"found {len(arguments)}")
        if arity == 1:
            (argument,) = arguments
            return lambda event: function(argument(event))
        first, second = arguments
        if name.text == "match" and getattr(second, "constant", False):
            pattern = second({})
            compiled = glob_regex(pattern) if isinstance(pattern, str) else None
            if compiled is None:  # a malformed pattern, or not a string: it matches nothing
                return lambda event: False
            return lambda event: _match(first(event), pattern, compiled)
        return lambda event: function(first(event), second(event))


def _constant(value: Any) -> Evaluator:
    def constant(event: dict[str, Any]) -> Any:
        return value
    constant.constant = True  # type: ignore[attr-defined]  # lets `match` compile a literal pattern once
    return constant


def _shown(token: Token) -> str:
    if token.kind == "end":
        return "the end of the expression"
    if token.kind == "string":
        return f"the string {token.text!r}"
    return repr(token.text)


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed FQL expression: `matches(event)` is true only when it evaluates to exactly `true`."""

    text: str
    evaluate: Evaluator = field(compare=False, repr=False)

    def matches(self, event: dict[str, Any]) -> bool:
        return self.evaluate(event) is True


def parse(text: str) -> Query:
    """Parse an FQL expression; FqlError (a ValueError) with the column when it does not parse."""
    if len(text.encode()) > MAX_QUERY_BYTES:
        raise FqlError(1, f"the expression is {len(text.encode()):,} bytes; Segment limits FQL to 5 KB")
    if not text.strip():
        raise FqlError(1, "the expression is empty")
    return Query(text, _Parser(text).query())
