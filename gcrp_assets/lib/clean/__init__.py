"""Stage 2, `filtered_threads`: raw threads cleaned, attributed and filtered, each drop with its reason.

Markup to text (`markup.py`), attribution (`attribution.py`), OOC remarks (`ooc.py`), forum handles
(`privacy.py`), one thread at a time (`cleaning.py`); the filters (`filters.py`, `language.py`,
`content_policy.py`) and duplicates (`dedup.py`); `stage.py` is the stage the asset calls (`run_filtered`).
"""
