"""Stage 6, `eval_report`: base vs adapter on the held-out split.

The run (`run.evaluate`, settings in `settings.py`), token roles (`roles.py`), teacher-forced losses
(`losses.py`), speaker selection (`speakers.py`), failure modes teacher-forced at every held-out model turn
(`failure_modes.py`), generation (`generation.py`), its failure detectors
(`detectors.py`) and the scoring of continuations (`scoring.py`), metrics and statistics (`metrics.py`), the
report (`report.py`) and the model card (`model_card.py`).
"""
