"""Stage 5, `base_model` and `lora_checkpoint`: what the out-of-process trainer and its asset need.

The base model (`base_model.py`), recipes as data (`recipes.py`), schedules (`schedules.py`), padded and
packed batches (`data.py`, `packing.py`), precision (`precision.py`).
"""
