"""Stage 6, `eval_report`: base vs adapter on the held-out split.

Token roles (`roles.py`), teacher-forced losses (`losses.py`), speaker selection (`speakers.py`),
generation (`generation.py`) and its failure detectors (`detectors.py`), metrics and statistics
(`metrics.py`), the report (`report.py`) and the model card (`model_card.py`).
"""
