"""One partition per dump: each file (or SillyTavern folder) dropped into the inbox, keyed by its name."""

import dagster as dg

dumps = dg.DynamicPartitionsDefinition(name="dumps")
