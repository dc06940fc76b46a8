"""The metric names a PromQL expression reads, by a small tokenizer (no PromQL parser in Python).

Follows Prometheus' lexer (promql/parser/lex.go) for what matters here: identifiers are
`[a-zA-Z_:][a-zA-Z0-9_:]*`; strings are '...', "..." or `...`; `#` starts a comment; `[...]` holds a
range or subquery duration; `{...}` holds label matchers. A metric name is an identifier that is not
a keyword or aggregation operator, is not followed by `(` (a function call), is not inside `{...}`,
and is not in the label list of `by`, `without`, `on`, `ignoring`, `group_left` or `group_right`.
`{__name__="x"}` names x. Grafana's template variables (`$x`, `${x}`, `$__rate_interval`) are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# promql/parser/lex.go: key words and aggregators; `bool`, `offset`, `atan2` and set operators.
KEYWORDS = frozenset(
    {
        "and", "or", "unless", "atan2", "bool", "by", "without", "on", "ignoring",
        "group_left", "group_right", "offset", "inf", "nan",
        "sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk", "bottomk",
        "count_values", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<var>\$\{[^}]*\}|\$[A-Za-z0-9_]+|\[\[[^\]]*\]\])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=(){}\[\],@:])
    """,
    re.VERBOSE,
)


class PromQLSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLSyntaxError(f"unexpected {expr[pos]!r} at {pos} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append(Token(kind, match.group()))
        pos = match.end()
    return tokens


_PAIRS = {")": "(", "]": "[", "}": "{"}


def _check_balanced(tokens: list[Token]) -> None:
    stack: list[str] = []
    for token in tokens:
        if token.kind != "op":
            continue
        if token.text in _PAIRS.values():
            stack.append(token.text)
        elif token.text in _PAIRS and (not stack or stack.pop() != _PAIRS[token.text]):
            raise PromQLSyntaxError(f"unbalanced {token.text!r}")
    if stack:
        raise PromQLSyntaxError(f"unclosed {stack[-1]!r}")


def _skip_group(tokens: list[Token], i: int, open_: str, close: str) -> int:
    """The index after the `close` that matches the `open_` at i."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j].kind == "op" and tokens[j].text == open_:
            depth += 1
        elif tokens[j].kind == "op" and tokens[j].text == close:
            depth -= 1
            if depth == 0:
                return j + 1
    raise PromQLSyntaxError(f"unbalanced {open_!r}")


def _name_in_matchers(tokens: list[Token]) -> list[str]:
    """`__name__="x"` inside one `{...}`: the name it selects."""
    names = []
    for i in range(len(tokens) - 2):
        if tokens[i].text == "__name__" and tokens[i + 1].text == "=" and tokens[i + 2].kind == "string":
            names.append(tokens[i + 2].text[1:-1])
    return names


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects (empty for an expression of literals only)."""
    tokens = tokenize(expr)
    _check_balanced(tokens)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if token.kind == "op" and token.text == "{":
            end = _skip_group(tokens, i, "{", "}")
            names.update(_name_in_matchers(tokens[i + 1 : end - 1]))
            i = end
            continue
        if token.kind == "op" and token.text == "[":
            i = _skip_group(tokens, i, "[", "]")
            continue
        if token.kind == "ident":
            lowered = token.text.lower()
            if lowered in LABEL_LIST_KEYWORDS and following is not None and following.text == "(":
                i = _skip_group(tokens, i + 1, "(", ")")
                continue
            is_call = following is not None and following.text == "("
            if lowered not in KEYWORDS and not is_call:
                names.add(token.text)
        i += 1
    return names


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<args>.*)\)\s*$", re.DOTALL)
_LABEL_NAMES = re.compile(r"^\s*label_names\((?P<args>.*)\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)


def grafana_variable_names(query: str) -> set[str]:
    """The metric names of a Grafana Prometheus variable query.

    Grafana's own functions (public/app/plugins/datasource/prometheus, "Query variable"):
    `label_values(label)`, `label_values(selector, label)`, `label_names([selector])`,
    `metrics(regex)`, `query_result(expr)`; the last argument of label_values is a label name.
    """
    if found := _LABEL_VALUES.match(query):
        args = found.group("args")
        selector, _, _label = args.rpartition(",")
        return metric_names(selector) if selector.strip() else set()
    if found := _LABEL_NAMES.match(query):
        return metric_names(found.group("args")) if found.group("args").strip() else set()
    if found := _QUERY_RESULT.match(query):
        return metric_names(found.group("expr"))
    raise PromQLSyntaxError(f"not a Grafana Prometheus variable query this test understands: {query!r}")
