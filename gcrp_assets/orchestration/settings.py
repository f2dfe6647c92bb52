"""One declaration per setting: a stage's run configuration is generated from its plain settings dataclasses.

A plain module declares each setting once, on a frozen dataclass, with its type, default and help text
(`field(default=..., metadata={"help": "..."})`). `config_class` turns one or more such dataclasses into a
`dg.Config` with the same field names, types, defaults and descriptions (what the Launchpad shows), and
`settings_from` builds the plain object back from a config, so no setting is renamed or re-declared
between the Dagster layer and the code that uses it. A module that annotates an asset's `config` parameter
with such a class must not use `from __future__ import annotations` (Dagster resolves the annotation).
"""

import dataclasses
import sys
import typing
from typing import Any, TypeVar

import dagster as dg
import pydantic
from pydantic import Field

T = TypeVar("T")


def _config_type(hint: Any) -> Any:
    """Dagster config has lists, not tuples: `tuple[str, ...]` becomes `list[str]`."""
    if typing.get_origin(hint) is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return list[args[0]] if args else list
    return hint


def config_class(name: str, *settings: type, doc: str, extra: dict[str, tuple[Any, Any]] | None = None) -> type:
    """A `dg.Config` subclass named `name` whose fields are those of the `settings` dataclasses (a field name
    may appear in only one of them), plus `extra` fields that configure the asset itself rather than the
    plain code ({name: (type, pydantic Field)})."""
    fields: dict[str, tuple[Any, Any]] = {}
    for cls in settings:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in fields:
                raise TypeError(f"setting {f.name!r} is declared twice ({cls.__name__} and another)")
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                raise TypeError(f"setting {cls.__name__}.{f.name} needs a default")
            if isinstance(default, tuple):
                default = list(default)
            help_text = f.metadata.get("help")
            if not help_text:
                raise TypeError(f"setting {cls.__name__}.{f.name} has no help text (field metadata 'help')")
            fields[f.name] = (_config_type(hints[f.name]), Field(default, description=help_text))
    for key, value in (extra or {}).items():
        if key in fields:
            raise TypeError(f"setting {key!r} is declared twice")
        fields[key] = value
    caller = sys._getframe(1).f_globals.get("__name__", __name__)  # the module that names the class
    return pydantic.create_model(name, __base__=dg.Config, __doc__=doc, __module__=caller, **fields)


def settings_from(config: dg.Config, cls: type[T]) -> T:
    """The plain settings object `cls` built from the config's fields of the same names."""
    values = config.model_dump()
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = values[f.name]
        kwargs[f.name] = tuple(value) if isinstance(value, list) and isinstance(f.default, tuple) else value
    return cls(**kwargs)
