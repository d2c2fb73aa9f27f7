"""Typed inputs of lockstep's custom resources, derived from lockstep.config's pydantic models.

A resource's inputs are the stack settings it uses (`opensearch`, `corpus`, …: typed objects in
the schema), the catalog entry's fields it uses (`dimension`, `spaceType`, …) and its own names.
The schema types come from the models, so the schema, the validation and the diff never disagree.

`normalized` reads a value tolerantly (fields the model no longer has are dropped, fields it
gained take their defaults) and dumps it with every default filled in: two values that mean the
same settings compare equal, so a default is never a diff and an upgrade of lockstep that adds a
setting is not a change.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lockstep.config import Catalog, CatalogEntry, StackSettings

TYPE_PREFIX = "lockstep:index:"


def _args(annotation: Any) -> tuple:
    return typing.get_args(annotation)


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in _args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else Any
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_token(model: type[BaseModel]) -> str:
    return f"{TYPE_PREFIX}{model.__name__}"


def schema_of(annotation: Any, found: dict[str, type[BaseModel]]) -> dict:
    """The Pulumi schema type of a model field's annotation; models met are added to `found`."""
    annotation = _without_none(annotation)
    origin = typing.get_origin(annotation)
    if _is_model(annotation):
        found[type_token(annotation)] = annotation
        return {"$ref": f"#/types/{type_token(annotation)}"}
    if origin is Literal:
        values = _args(annotation)
        kind = "string" if all(isinstance(value, str) for value in values) else "number"
        return {"type": kind}
    if origin in (tuple, list):
        return {"type": "array", "items": schema_of(_args(annotation)[0], found)}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_of(_args(annotation)[1], found)}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if annotation in simple:
        return {"type": simple[annotation]}
    return {"$ref": "pulumi.json#/Any"}


def object_types(found: dict[str, type[BaseModel]]) -> dict[str, dict]:
    """Schema `types` for every model reached from `found` (nested models included)."""
    done: dict[str, dict] = {}
    pending = dict(found)
    while pending:
        token, model = pending.popitem()
        if token in done:
            continue
        nested: dict[str, type[BaseModel]] = {}
        properties = {}
        for name, field in model.model_fields.items():
            properties[field.alias or name] = {
                **schema_of(field.annotation, nested),
                "description": f"{model.__name__}.{field.alias or name} (lockstep.config).",
            }
        required = sorted(field.alias or name for name, field in model.model_fields.items() if field.is_required())
        done[token] = {
            "type": "object",
            "description": (model.__doc__ or model.__name__).strip().splitlines()[0],
            "properties": properties,
            "required": required,
        }
        pending.update({key: value for key, value in nested.items() if key not in done})
    return done


# ------------------------------------------------------------------------------------- tolerance


def known_fields(model: type[BaseModel], value: Any) -> Any:
    """`value` without the fields `model` does not have (recursively): what an older lockstep
    recorded and this one removed is ignored, not refused."""
    if not isinstance(value, dict):
        return value
    kept = {}
    for name, field in model.model_fields.items():
        for key in (field.alias or name, name):
            if key in value:
                kept[field.alias or name] = _known(field.annotation, value[key])
                break
    return kept


def _known(annotation: Any, value: Any) -> Any:
    annotation = _without_none(annotation)
    if _is_model(annotation):
        return known_fields(annotation, value)
    if typing.get_origin(annotation) in (tuple, list) and isinstance(value, list):
        return [_known(_args(annotation)[0], item) for item in value]
    return value


def field_annotation(name: str) -> Any:
    """The annotation of a StackSettings or CatalogEntry field, by its wire (camelCase) name."""
    for model in (StackSettings, CatalogEntry):
        for field_name, field in model.model_fields.items():
            if (field.alias or field_name) == name:
                return field.annotation
    return None


def normalized(annotation: Any, value: Any) -> Any:
    """A value as its model reads it, every default filled in; a value the model refuses as it is
    (check() names it)."""
    plain = _without_none(annotation)
    if _is_model(plain) and isinstance(value, dict):
        try:
            return plain.model_validate(known_fields(plain, value)).model_dump(by_alias=True, mode="json")
        except ValueError:
            return with_defaults(plain, value)
    if typing.get_origin(plain) in (tuple, list) and isinstance(value, list):
        return [normalized(_args(plain)[0], item) for item in value]
    return value


def with_defaults(model: type[BaseModel], value: dict) -> dict:
    """`value` with every field it lacks set to its default (nested models alike), not validated:
    a value the model refuses now (an older lockstep's state) then differs from one it accepts
    only where it really does, never in every default the older input left out."""
    filled = dict(known_fields(model, value))
    for name, field in model.model_fields.items():
        key, annotation = field.alias or name, _without_none(field.annotation)
        if key not in filled and not field.is_required():
            filled[key] = dump_default(field)
        elif key in filled and _is_model(annotation) and isinstance(filled[key], dict):
            filled[key] = normalized(annotation, filled[key])
    return filled


def dump_default(field: FieldInfo) -> Any:
    """A field's default as it is written on the wire."""
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, mode="json")
    if isinstance(value, tuple):
        return [item.model_dump(by_alias=True, mode="json") if isinstance(item, BaseModel) else item for item in value]
    return value


def catalog_normalized(value: Any) -> Any:
    try:
        return Catalog.model_validate(known_fields(Catalog, value)).model_dump(by_alias=True, mode="json")
    except ValueError:
        return value


def changed_paths(old: Any, new: Any, path: str) -> list[str]:
    """The leaf paths (`opensearch.replicas`, `derived[0].k`) where two normalized values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            found
            for key in sorted(set(old) | set(new))
            for found in changed_paths(old.get(key), new.get(key), f"{path}.{key}")
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            found
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for found in changed_paths(a, b, f"{path}[{i}]")
        ]
    return [] if old == new else [path]
