"""Run configuration of lora_checkpoint (Launchpad, `--config-json`, or `-c run.yaml`).

`recipe` picks a preset (`gcrp_assets/lib/training/recipes.py`): its values apply to every field you leave unset;
a field you set always wins, even when you set it to the `smoke` value. Unset fields show as `null` and
resolve to the recipe's value, else to the `smoke` default named in each description (today's CPU
defaults). Only `recipe`, `allow_cpu` and `force` have plain defaults. `resolved()` gives the values a
run uses; the asset fingerprints those, so `recipe: smoke` and an equivalent explicit config share
one adapter.

The fields are generated from the settings declared, grouped by concern (LoRA, optimizer and schedule, model
loading and quantization, data, launch, run control), in `gcrp_assets/lib/training/hyperparameters.py`: one
declaration per setting, flat names here. `hyperparameters()` gives the resolved values by concern, the
typed object the trainer parses its extras into.
"""

import typing
from typing import Any, Optional

import dagster as dg
import pydantic
from pydantic import Field

from gcrp_assets.lib.training.hyperparameters import Hyperparameters, settings_fields
from gcrp_assets.lib.training.recipes import DEFAULTS, resolve


class _RecipeConfig(dg.Config):
    """LoraConfig's behaviour; its fields come from `lib/training/hyperparameters.py`."""

    def resolved(self) -> dict[str, Any]:
        """Every field as the run uses it: set here > the recipe's preset > the smoke default."""
        return resolve(self.model_dump(), self.model_fields_set)[0]

    def recipe_fields(self) -> dict[str, Any]:
        """The fields whose values came from the named recipe's preset."""
        return resolve(self.model_dump(), self.model_fields_set)[1]

    def hyperparameters(self) -> Hyperparameters:
        """The resolved values by concern (what the trainer reads)."""
        return Hyperparameters.from_flat(self.resolved())


def _config_fields() -> dict[str, tuple[Any, Any]]:
    """One flat config field per setting of `lib.training.hyperparameters` (lists for tuples). A setting a recipe
    may set is None until set, its description naming the smoke default; the others keep their default."""
    fields: dict[str, tuple[Any, Any]] = {}
    for group, f in settings_fields():
        hint = typing.get_type_hints(group)[f.name]
        if typing.get_origin(hint) is tuple:
            hint = list[typing.get_args(hint)[0]]
        if f.metadata["preset"]:
            fields[f.name] = (Optional[hint], Field(None, description=f"{f.metadata['help']} Unset: the recipe's "
                                                                      f"value (smoke: {DEFAULTS[f.name]!r})."))
        else:
            fields[f.name] = (hint, Field(f.default, description=f.metadata["help"]))
    return fields


LoraConfig = pydantic.create_model("LoraConfig", __base__=_RecipeConfig, __doc__=__doc__, __module__=__name__,
                                   **_config_fields())
