"""Importers: each turns one source layout into the canonical thread records of `raw-threads.md`.

Every importer returns a `gcrp_assets.lib.dumps.DumpContents` whose threads went through the same
`_validate_thread` as the native JSONL, so nothing downstream needs to know where a thread came
from. `gcrp_assets.lib.dumps.read_dump` picks the importer by content (`detect_layout`).

- `post_tables`: CSV, TSV and Parquet tables with one row per post (forum dumps such as RPGuild).
- `sillytavern`: SillyTavern export folders (group chats, groups, member cards) and single chats.
- `cards`: Character Card V1/V2/V3 as JSON or PNG, for the SillyTavern importer.
"""
