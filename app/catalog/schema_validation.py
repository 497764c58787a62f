"""Judge a body against an endpoint's own OpenAPI input schema, with fal-shaped errors.

jsonschema-rs (a compiled Rust validator) does the schema work: it implements JSON Schema 2020-12
completely (`$ref`, `anyOf`, `exclusiveMinimum`, ...), is kept current, and validates a typical body in
a few microseconds, so a configured model costs about what a pydantic model does (bench/schema_validation.py).
The errors are rebuilt here from each error's kind and path, never from its message, because the
library's messages quote the offending value (data URIs can be megabytes, prompts may be private).

File-URL fields (names ending in `_url`/`_urls`, strings described as URLs) then get the same URL and
data-URI policy as the built-in nine, through the nine's own check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
from pydantic_core import PydanticCustomError

from app.catalog.inputs import _check_image_url  # the nine's URL / data-URI policy, shared on purpose
from app.catalog.schema_documents import EndpointDocument, validator_schema
from app.catalog.spec import ValidationLimits

_REF_PREFIX = "#/components/schemas/"
_JSON_TYPES = {"string": "string", "integer": "int", "number": "float", "boolean": "bool", "object": "dict",
               "array": "list", "null": "none"}
_TEXT_FIELDS = ("prompt", "negative_prompt")
_BODY = ["body"]  # never mutated: each level builds a new loc list


@dataclass(slots=True)
class _Info:
    """What `_check_image_url` reads from pydantic's ValidationInfo: the field name and the limits."""

    field_name: str
    context: ValidationLimits


class SchemaInput:
    """An endpoint's compiled input validators (closed: unknown fields refused; open: allowed)."""

    def __init__(self, doc: EndpointDocument) -> None:
        self.doc = doc
        self._closed = jsonschema_rs.Draft202012Validator(validator_schema(doc, closed=True))
        self._open = jsonschema_rs.Draft202012Validator(validator_schema(doc, closed=False))
        self._plan = _PlanBuilder(doc.components).build(doc.input_schema) or _UrlPlan()

    @property
    def name(self) -> str:
        return self.doc.input_name

    def validate(self, payload: dict[str, Any], limits: ValidationLimits) -> list[dict[str, Any]]:
        validator = self._open if limits.allow_unknown_fields else self._closed
        if not validator.is_valid(payload):
            return sorted((err for exc in validator.iter_errors(payload) for err in _errors(exc)), key=_order)
        return self._policy_errors(payload, limits)

    def _policy_errors(self, payload: dict[str, Any], limits: ValidationLimits) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        for name in _TEXT_FIELDS:
            value = payload.get(name)
            if value.__class__ is str and len(value) > limits.max_prompt_length:
                errors.append({"loc": ["body", name], "type": "string_too_long",
                               "msg": f"String should have at most {limits.max_prompt_length} characters"})
        self._plan.check(payload, _BODY, limits, errors)
        return errors


@dataclass(slots=True)
class _UrlPlan:
    """Where an object's file-URL fields are, worked out once from the schema, so a request walks only them."""

    urls: frozenset[str] = frozenset()  # string fields holding one URL
    url_lists: frozenset[str] = frozenset()  # array fields of URLs
    children: dict[str, _UrlPlan] = field(default_factory=dict)  # object or array fields that hold some

    def check(self, value: Any, loc: list, limits: ValidationLimits, errors: list[dict[str, Any]]) -> None:
        """Appends to `errors` (no generators: this runs on every valid request)."""
        if isinstance(value, list):
            for index, element in enumerate(value):
                self.check(element, [*loc, index], limits, errors)
            return
        if not isinstance(value, dict):
            return
        for key in self.urls:
            item = value.get(key)
            if item.__class__ is str:
                _check(item, key, [*loc, key], limits, errors)
        for key in self.url_lists:
            item = value.get(key)
            if isinstance(item, list):
                for index, element in enumerate(item):
                    if element.__class__ is str:
                        _check(element, key, [*loc, key, index], limits, errors)
        for key, child in self.children.items():
            item = value.get(key)
            if item is not None:
                child.check(item, [*loc, key], limits, errors)


class _PlanBuilder:
    def __init__(self, components: dict[str, Any]) -> None:
        self._components = components
        self._building: set[int] = set()

    def _resolve(self, node: Any) -> dict[str, Any]:
        for _ in range(32):  # a cycle of bare $refs ends here rather than looping
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                break
            node = self._components.get(node["$ref"].removeprefix(_REF_PREFIX), {})
        return node if isinstance(node, dict) else {}

    def _branches(self, node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for key in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(key) or ():
                yield from self._branches(self._resolve(branch))

    def build(self, node: Any) -> _UrlPlan | None:
        """The plan for values of `node` (an object, or an array of them), None when it holds no URL field."""
        node = self._resolve(node)
        if id(node) in self._building:  # a recursive type: its URL fields are checked at the outer level only
            return None
        self._building.add(id(node))
        try:
            props: dict[str, Any] = {}
            items: list[Any] = []
            for branch in self._branches(node):
                props.update(branch.get("properties") or {})
                if isinstance(branch.get("items"), dict):
                    items.append(branch["items"])
            if items and not props:
                return self.build(items[0])
            urls, url_lists, children = set(), set(), {}
            for name, raw in props.items():
                prop = self._resolve(raw)
                if _is_url_field(name, prop) or any(_is_url_field(name, b) for b in self._branches(prop)):
                    urls.add(name)
                if name.endswith("_urls"):
                    url_lists.add(name)
                elif (child := self.build(prop)) is not None:
                    children[name] = child
            if not (urls or url_lists or children):
                return None
            return _UrlPlan(frozenset(urls), frozenset(url_lists), children)
        finally:
            self._building.discard(id(node))


def _is_url_field(name: str, prop: dict[str, Any]) -> bool:
    if name.endswith("_url"):
        return True
    text = f"{prop.get('description', '')} {prop.get('title', '')}".lower()
    return prop.get("type") == "string" and ("url of" in text or "url to" in text or "url for" in text)


def _check(value: str, field: str, loc: list, limits: ValidationLimits, errors: list[dict[str, Any]]) -> None:
    try:
        _check_image_url(value, _Info(field, limits))  # type: ignore[arg-type]
    except PydanticCustomError as exc:
        errors.append({"loc": loc, "msg": exc.message(), "type": exc.type})


def _order(err: dict[str, Any]) -> tuple:
    return tuple(str(part) for part in err["loc"])


def _errors(exc: jsonschema_rs.ValidationError) -> Iterator[dict[str, Any]]:
    loc = ["body", *exc.instance_path]
    kind = exc.kind
    name = type(kind).__name__
    if name == "Required":
        yield {"loc": [*loc, kind.property], "msg": "Field required", "type": "missing"}
    elif name == "AnyOf" and (branch := _matching_branch(exc)) is not None:
        for inner in branch:  # the one branch of the value's own type: its errors name the nested field
            yield from _errors(inner)
    elif name == "AdditionalProperties":
        for extra in kind.unexpected:
            yield {"loc": [*loc, extra], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
    else:
        msg, kind_type = _describe(name, kind)
        yield {"loc": loc, "msg": msg, "type": kind_type}


_SHAPE_KINDS = frozenset({"Type", "Enum", "Constant"})


def _matching_branch(exc: jsonschema_rs.ValidationError) -> list | None:
    """The errors of the only anyOf branch whose type and values the input has, if exactly one does."""
    here = list(exc.instance_path)
    matching = [
        branch for branch in exc.kind.context
        if not any(type(err.kind).__name__ in _SHAPE_KINDS and list(err.instance_path) == here for err in branch)
    ]
    return matching[0] if len(matching) == 1 else None


def _describe(name: str, kind: Any) -> tuple[str, str]:
    """pydantic's wording and type for each kind fal's schemas use; never the offending value."""
    if name == "Enum":
        options = [repr(option) for option in kind.options]
        expected = options[0] if len(options) == 1 else ", ".join(options[:-1]) + f" or {options[-1]}"
        return f"Input should be {expected}", "enum"
    if name == "Type":
        types = kind.types if isinstance(kind.types, list) else [kind.types]
        words = " or ".join(f"a valid {_JSON_TYPES.get(str(t), str(t))}" for t in types)
        return f"Input should be {words}", f"{_JSON_TYPES.get(str(types[0]), 'value')}_type"
    bounds = {
        "Minimum": ("Input should be greater than or equal to {}", "greater_than_equal"),
        "ExclusiveMinimum": ("Input should be greater than {}", "greater_than"),
        "Maximum": ("Input should be less than or equal to {}", "less_than_equal"),
        "ExclusiveMaximum": ("Input should be less than {}", "less_than"),
        "MinLength": ("String should have at least {} characters", "string_too_short"),
        "MaxLength": ("String should have at most {} characters", "string_too_long"),
        "MinItems": ("List should have at least {} items", "too_short"),
        "MaxItems": ("List should have at most {} items", "too_long"),
    }
    if name in bounds:
        template, kind_type = bounds[name]
        return template.format(kind.limit), kind_type
    if name in ("AnyOf", "OneOfNotValid"):
        return "Input should match one of the allowed types or values", "union_error"
    if name == "Constant":
        return f"Input should be {kind.expected_value!r}", "literal_error"
    if name == "Pattern":
        return f"String should match pattern '{kind.pattern}'", "string_pattern_mismatch"
    return "Input is not valid for this field", name.lower()
