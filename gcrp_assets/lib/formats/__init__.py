"""Stage 4, `tokenized_parquet`: samples rendered in a prompt format and tokenized with labels.

The stage (`stage.run_tokenize`, settings in `settings.py`), format specs, rendering and chat templates
(`chat_format.py`), tokenization with labels and windows (`tokenization.py`), the thread-level train/eval
split (`split.py`), SillyTavern presets that rebuild the format (`sillytavern_presets.py`).
"""
