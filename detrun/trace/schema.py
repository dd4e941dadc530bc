"""Small payload-schema combinators: what a decoded msgpack value of a trace may be.

A schema checks a value in place and raises SchemaError naming where inside the value it is
wrong (`[1]: expected int in [0, 4294967295], got str`). Checks are cheap on the success path
(type tests and comparisons, no copies), so the reader can check every event of a long trace.
Types are exact: a bool is not an int, an int is not a float.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping


class SchemaError(ValueError):
    """A value does not match its schema; `where` is the path inside the value."""

    def __init__(self, problem: str, where: str = "") -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.problem = problem
        self.where = where

    def inside(self, step: str) -> SchemaError:
        """Return the same error located one level further out (`step` is `[2]` or `.key`)."""
        return SchemaError(self.problem, step + self.where)


def _key_step(key: object) -> str:
    """Return `.key` for a printable key, else `[repr]`: an error stays one line whatever a trace's keys hold."""
    return f".{key}" if isinstance(key, str) and key.isprintable() else f"[{key!r}]"


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def _short(value: object) -> str:
    """Return a value's repr cut to a length that fits one error line (never str() of a huge int)."""
    if type(value) is int and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    text = repr(value) if isinstance(value, (int, float, bool, str, bytes)) or value is None else _type_name(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Schema:
    """The base of every schema: `check(value)` raises SchemaError or returns None."""

    def check(self, value: Any) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """Return what the schema accepts, in a few words (for error messages and docs)."""
        raise NotImplementedError

    def matches(self, value: Any) -> bool:
        """Return whether the value passes, without building an error (OneOf's fast path)."""
        try:
            self.check(value)
        except SchemaError:
            return False
        return True

    def fail(self, value: Any) -> SchemaError:
        return SchemaError(f"expected {self.describe()}, got {_type_name(value)} {_short(value)}")


class _Null(Schema):
    def check(self, value: Any) -> None:
        if value is not None:
            raise self.fail(value)

    def matches(self, value: Any) -> bool:
        return value is None

    def describe(self) -> str:
        return "nil"


Null = _Null()


class _Bool(Schema):
    def check(self, value: Any) -> None:
        if type(value) is not bool:
            raise self.fail(value)

    def matches(self, value: Any) -> bool:
        return type(value) is bool

    def describe(self) -> str:
        return "bool"


Bool = _Bool()


class Int(Schema):
    """An int (never a bool) in [low, high]."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high

    def check(self, value: Any) -> None:
        if type(value) is not int or not self.low <= value <= self.high:
            raise self.fail(value)

    def matches(self, value: Any) -> bool:
        return type(value) is int and self.low <= value <= self.high

    def describe(self) -> str:
        def bound(n: int) -> str:
            return str(n) if abs(n) < 1 << 64 else f"{'-' if n < 0 else ''}2**{abs(n).bit_length() - 1}"

        return f"int in [{bound(self.low)}, {bound(self.high)}]"


class Float(Schema):
    """A float (msgpack float32 or float64); NaN and infinities included, as a loss can be."""

    def check(self, value: Any) -> None:
        if type(value) is not float:
            raise self.fail(value)

    def matches(self, value: Any) -> bool:
        return type(value) is float

    def describe(self) -> str:
        return "float"


class Str(Schema):
    """A str of at most max_len characters, optionally matching a regular expression."""

    def __init__(self, max_len: int, pattern: str | None = None) -> None:
        self.max_len = max_len
        self.pattern = pattern or None
        # Compiled at the first check: the registry builds dozens of schemas at import, and a
        # replay's launcher imports it before its child starts (start-up).
        self._compiled: re.Pattern[str] | None = None

    def check(self, value: Any) -> None:
        if type(value) is not str or len(value) > self.max_len:
            raise self.fail(value)
        if self.pattern is not None:
            if self._compiled is None:
                self._compiled = re.compile(self.pattern)
            if not self._compiled.fullmatch(value):
                raise SchemaError(f"expected a str matching {self.pattern}, got {_short(value)}")

    def describe(self) -> str:
        return f"str of at most {self.max_len} characters"


class Bytes(Schema):
    """A bytes value of at most max_len bytes."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def check(self, value: Any) -> None:
        if type(value) is not bytes or len(value) > self.max_len:
            raise self.fail(value)

    def matches(self, value: Any) -> bool:
        return type(value) is bytes and len(value) <= self.max_len

    def describe(self) -> str:
        return f"bytes of at most {self.max_len}"


class OneOf(Schema):
    """Any one of several schemas (tried in order)."""

    def __init__(self, *options: Schema) -> None:
        self.options = options

    def matches(self, value: Any) -> bool:
        for option in self.options:
            if option.matches(value):
                return True
        return False

    def check(self, value: Any) -> None:
        for option in self.options:
            if option.matches(value):
                return
        errors = []
        for option in self.options:
            try:
                option.check(value)
                return
            except SchemaError as exc:
                errors.append(exc)
        # A container that failed inside says where; otherwise name the alternatives.
        deep = [e for e in errors if e.where]
        if len(deep) == 1:
            raise deep[0]
        raise self.fail(value)

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)


class ListOf(Schema):
    """A list whose items all match one schema, with min_len <= length <= max_len."""

    def __init__(self, item: Schema, max_len: int, min_len: int = 0) -> None:
        self.item = item
        self.max_len = max_len
        self.min_len = min_len

    def check(self, value: Any) -> None:
        if type(value) is not list or not self.min_len <= len(value) <= self.max_len:
            raise self.fail(value)
        item = self.item
        for index, element in enumerate(value):
            try:
                item.check(element)
            except SchemaError as exc:
                raise exc.inside(f"[{index}]") from None

    def describe(self) -> str:
        return f"list of {self.min_len}..{self.max_len} items"


class Tuple(Schema):
    """A list of exactly len(items) elements, element i matching items[i]."""

    def __init__(self, *items: Schema) -> None:
        self.items = items

    def check(self, value: Any) -> None:
        if type(value) is not list or len(value) != len(self.items):
            raise self.fail(value)
        for schema, element in zip(self.items, value):
            if not schema.matches(element):
                break
        else:
            return
        for index, (schema, element) in enumerate(zip(self.items, value)):
            try:
                schema.check(element)
            except SchemaError as exc:
                raise exc.inside(f"[{index}]") from None

    def describe(self) -> str:
        return f"list of {len(self.items)} items"


class MapOf(Schema):
    """A map whose keys and values match one schema each, with at most max_len entries."""

    def __init__(self, key: Schema, value: Schema, max_len: int) -> None:
        self.key = key
        self.value = value
        self.max_len = max_len

    def check(self, value: Any) -> None:
        if type(value) is not dict or len(value) > self.max_len:
            raise self.fail(value)
        for key, item in value.items():
            try:
                self.key.check(key)
            except SchemaError as exc:
                raise SchemaError(f"bad key: {exc.problem}") from None
            try:
                self.value.check(item)
            except SchemaError as exc:
                raise exc.inside(_key_step(key)) from None

    def describe(self) -> str:
        return f"map of at most {self.max_len} entries"


class Record(Schema):
    """A map with named fields: `required` must be present, `optional` may be; others need `extra`.

    `extra` None rejects unknown keys (a trace may not smuggle in a setting detrun never writes).
    """

    def __init__(self, required: Mapping[str, Schema] | None = None, optional: Mapping[str, Schema] | None = None,
                 extra: Schema | None = None, max_len: int = 256) -> None:
        self.required = dict(required or {})
        self.fields = {**(optional or {}), **self.required}
        self.extra = extra
        self.max_len = max_len

    def check(self, value: Any) -> None:
        if type(value) is not dict or len(value) > self.max_len:
            raise self.fail(value)
        for name in self.required:
            if name not in value:
                raise SchemaError(f"missing field {name!r}")
        for key, item in value.items():
            schema = self.fields.get(key) if type(key) is str else None
            if schema is None:
                if self.extra is None or type(key) is not str:
                    raise SchemaError(f"unexpected field {_short(key)}")
                schema = self.extra
            try:
                schema.check(item)
            except SchemaError as exc:
                raise exc.inside(_key_step(key)) from None

    def describe(self) -> str:
        return "map with fields " + ", ".join(self.fields) if self.fields else "map"


class Check(Schema):
    """A schema plus a predicate over the whole value (a consistency rule between fields)."""

    def __init__(self, inner: Schema, rule: Callable[[Any], bool], says: str) -> None:
        self.inner = inner
        self.rule = rule
        self.says = says

    def check(self, value: Any) -> None:
        self.inner.check(value)
        if not self.rule(value):
            raise SchemaError(self.says)

    def describe(self) -> str:
        return self.inner.describe()


class Data(Schema):
    """Plain data of bounded size and depth: nil, bool, int, float, str, bytes, lists, str-keyed maps.

    For the free-form parts of a trace (the environment fingerprint, torch's build facts).
    """

    def __init__(self, max_depth: int = 8, max_len: int = 1 << 16, max_bits: int = 8192) -> None:
        self.max_depth = max_depth
        self.max_len = max_len
        self.max_bits = max_bits

    def check(self, value: Any, depth: int = 0) -> None:  # type: ignore[override]
        kind = type(value)
        if value is None or kind is bool or kind is float:
            return
        if kind is int:
            if value.bit_length() > self.max_bits:
                raise self.fail(value)
            return
        if kind is str or kind is bytes:
            if len(value) > self.max_len:
                raise self.fail(value)
            return
        if kind is list or kind is dict:
            if depth >= self.max_depth:
                raise SchemaError(f"nested deeper than {self.max_depth} levels")
            if len(value) > self.max_len:
                raise self.fail(value)
            items = value.items() if kind is dict else enumerate(value)
            for key, item in items:
                if kind is dict and type(key) is not str:
                    raise SchemaError(f"bad key: expected str, got {_type_name(key)}")
                try:
                    self.check(item, depth + 1)
                except SchemaError as exc:
                    raise exc.inside(_key_step(key) if kind is dict else f"[{key}]") from None
            return
        raise self.fail(value)

    def describe(self) -> str:
        return "plain data"
