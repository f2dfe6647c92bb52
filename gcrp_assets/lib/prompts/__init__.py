"""Stage 3, `augmented_prompts`: cleaned threads into training samples.

Sheets rewritten into the uniform template (`sheets.py`, optionally by a local LLM: `sheet_rewrite.py`);
one sample per chosen user character with its system prompt (`samples.py`); `stage.py` is the stage the
asset calls (`run_augmented`).
"""
