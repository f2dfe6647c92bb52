"""Arrow schemas of the tables that flow between stages. One place, so every stage agrees."""

from __future__ import annotations

import pyarrow as pa

CHARACTER = pa.struct([
    ("name", pa.string()),
    ("player", pa.string()),
    ("sheet", pa.string()),
    ("aliases", pa.list_(pa.string())),  # other names the source used for this character (a renamed persona)
])
POST = pa.struct([
    ("post_id", pa.string()),
    ("author", pa.string()),
    ("character", pa.string()),
    ("text", pa.string()),
    ("posted_at", pa.string()),
    ("kind", pa.string()),  # "ic" (a character's post) | "narrator" (the source program's narrator/system message)
])

# raw_threads: the canonical thread, exactly as read, plus where it came from: (`file`, `line`) names the
# record inside the dump (`file` relative to a dump folder, or the dump's own name), `thread_id` is unique in it.
RAW_THREADS = pa.schema([
    ("dump", pa.string()),
    ("file", pa.string()),
    ("line", pa.int64()),
    ("thread_id", pa.string()),
    ("title", pa.string()),
    ("forum", pa.string()),
    ("url", pa.string()),
    ("tags", pa.list_(pa.string())),
    ("human", pa.string()),  # the character the dump marks as the human user's (SillyTavern `is_user`), or null
    ("characters", pa.list_(CHARACTER)),
    ("posts", pa.list_(POST)),
])

# Every stage's rejects: the thread (or line) kept whole, with a reason code.
REJECTS = pa.schema([
    ("dump", pa.string()),
    ("file", pa.string()),
    ("line", pa.int64()),
    ("thread_id", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("record", pa.string()),  # the rejected thread or line, as JSON text
    ("evidence", pa.string()),  # what a content rule matched (JSON list), kept here and never in metadata
])

TURN = pa.struct([
    ("post_id", pa.string()),
    ("character", pa.string()),
    ("text", pa.string()),
    ("kind", pa.string()),  # "ic" (roleplay) | "ooc" (name-less `(OOC: …)` turn: ooc_policy keep, narrator_policy ooc)
])
CLEAN_CHARACTER = pa.struct([("name", pa.string()), ("sheet", pa.string()), ("aliases", pa.list_(pa.string()))])

# filtered_threads: cleaned, attributed, handle-free roleplay turns. No forum handles anywhere.
FILTERED_THREADS = pa.schema([
    ("dump", pa.string()),
    ("thread_id", pa.string()),
    ("title", pa.string()),
    ("tags", pa.list_(pa.string())),
    ("human", pa.string()),  # the character the dump marks as the human user's, when it says
    ("characters", pa.list_(CLEAN_CHARACTER)),
    ("turns", pa.list_(TURN)),
    ("n_posts", pa.int64()),
    ("n_ooc_remarks", pa.int64()),
    ("n_ooc_posts", pa.int64()),
    ("n_empty_posts", pa.int64()),
    ("n_unattributed_posts", pa.int64()),
    ("n_posts_with_ooc", pa.int64()),
    ("n_narrator_posts", pa.int64()),
    ("n_reasoning_blocks", pa.int64()),
    ("max_post_chars", pa.int64()),
])

SAMPLE_TURN = pa.struct([("role", pa.string()), ("name", pa.string()), ("text", pa.string())])

# augmented_prompts: one training sample per (thread, user character).
SAMPLES = pa.schema([
    ("sample_id", pa.string()),
    ("thread_key", pa.string()),
    ("dump", pa.string()),
    ("thread_id", pa.string()),
    ("user_character", pa.string()),
    ("system", pa.string()),
    ("turns", pa.list_(SAMPLE_TURN)),
    ("sheets", pa.string()),  # JSON {character: uniform sheet markdown}
    ("variant", pa.int32()),  # index of this user character among the thread's samples
    ("name_map", pa.string()),  # JSON {"{user}"/"{charN}": real name}
    ("human_marked", pa.bool_()),  # the dump said who the human is, and user_character is that character
    ("aliases", pa.string()),  # JSON {other name the source used: the character's name} (a renamed persona)
])

# tokenized_parquet: model-ready rows.
TOKENIZED = pa.schema([
    ("sample_id", pa.string()),
    ("window", pa.int32()),
    ("thread_key", pa.string()),
    ("split", pa.string()),
    ("format", pa.string()),
    ("first_turn", pa.int32()),
    ("last_turn", pa.int32()),
    ("n_tokens", pa.int32()),
    ("n_trained", pa.int32()),
    ("text", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
])
