"""The Dagster layer's shared code (not definitions): artifacts and caching (`artifacts.py`), run
configuration built from the plain settings (`configs.py`, `training_config.py`), resource classes
(`resources.py`), the dump partitions (`partitions.py`) and the whole-chain runner (`runner.py`).
`gcrp_assets/defs/` holds only definitions, which use these."""
