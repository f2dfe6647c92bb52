"""Stage 1, `raw_threads`: dumps into canonical threads (the input contract, `contract.py`).

`dumps.py` recognises a dump's layout by content and reads it as a stream (`iter_dump`); one module per
source layout (`canonical.py`, `post_tables.py`, `sillytavern.py` with `cards.py`); `lines.py` reads
lines with bounded memory; `inbox.py` keeps every read inside the inbox; `stage.py` is the stage the
asset calls (`run_raw`).
"""
