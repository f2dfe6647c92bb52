"""Progress lines in the run log: the formatting (`lib.progress`) and the trainer's callback, driven with a
fake clock and the Trainer's state as the Hugging Face Trainer fills it."""

from types import SimpleNamespace

import pytest

from gcrp_assets.lib.progress import Phases, duration, fraction, progress_line, remaining_seconds, scientific


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (44.6, "45 s"), (59.4, "59 s"), (61, "1 min"),
                                           (150, "2 min"), (3599, "1 h"), (4800, "1 h 20 min"),
                                           (None, "?"), (float("nan"), "?"), (-1, "?")])
def test_durations_read_as_people_plan(seconds, text):
    assert duration(seconds) == text


def test_rates_fractions_and_eta():
    assert scientific(5e-4) == "5.0e-4" and scientific(1.23e-10) == "1.2e-10" and scientific(0.0) == "0"
    assert fraction(5, 16) == "5/16 (31 %)" and fraction(15.99, 16).endswith("(99 %)") and fraction(0, 0) == "0/0 (0 %)"
    assert remaining_seconds(0, 16, 10.0) is None
    assert remaining_seconds(4, 16, 40.0) == pytest.approx(120.0)
    assert progress_line("step", 5, 16, ["loss 2.86"], 120.0) == "step 5/16 (31 %) · loss 2.86 · ETA 2 min"
    assert progress_line("step", 16, 16, ["loss 2.01"], 0.0) == "step 16/16 (100 %) · loss 2.01"


def test_phases_are_numbered_and_timed():
    lines, now = [], iter([100.0, 100.0, 112.0])
    phases = Phases(["read", "train"], lines.append, clock=lambda: next(now))
    phases.start("read")
    phases.start("train", "16 steps")
    assert lines == ["phase 1/2 · read · 0 s so far", "phase 2/2 · train (16 steps) · 12 s so far"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Log:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)


def test_trainer_reports_step_k_of_n_with_loss_lr_throughput_and_eta(monkeypatch):
    from gcrp_assets.trainer.train import ReportProgress

    monkeypatch.delenv("RANK", raising=False)
    clock, log, tokens = Clock(), Log(), {"n": 0}
    callback = ReportProgress(log, tokens=lambda: tokens["n"], world_size=2, quiet_seconds=30, clock=clock)
    state = SimpleNamespace(global_step=4, max_steps=20)   # resumed at step 4 of 20
    quiet, logging = SimpleNamespace(should_log=False), SimpleNamespace(should_log=True)
    callback.on_train_begin(None, state, quiet)

    clock.now += 5.0   # the evaluation of the start: not training time
    callback.on_log(None, state, quiet, logs={"eval_loss": 2.91449, "eval_runtime": 5.0})
    assert log.lines[-1] == "eval at step 4/20 (20 %) · eval loss 2.914 · 5 s"

    clock.now += 31.0  # a step with no log line for longer than quiet_seconds: a line without the loss
    state.global_step, tokens["n"] = 5, 310
    callback.on_step_end(None, state, quiet)
    assert log.lines[-1] == "step 5/20 (25 %) · 20 tok/s · ETA 8 min"   # 620 tokens / 31 s; 31 s a step
    callback.on_step_end(None, state, quiet)
    assert len(log.lines) == 2  # not again until quiet_seconds passed

    clock.now += 9.0
    state.global_step, tokens["n"] = 8, 400
    callback.on_step_end(None, state, logging)  # its line comes from on_log
    callback.on_log(None, state, logging, logs={"loss": 2.8612, "learning_rate": 5e-4, "grad_norm": 1.5,
                                                "epoch": 0.4})
    assert log.lines[-1] == "step 8/20 (40 %) · loss 2.86 · lr 5.0e-4 · 20 tok/s · ETA 2 min"
    assert len(log.lines) == 3

    state.global_step = 20
    callback.on_log(None, state, logging, logs={"train_runtime": 130.0, "train_loss": 2.5, "epoch": 1.0})
    assert log.lines[-1] == "trained 16 steps · mean loss 2.50 · 2 min"
    assert [e["step"] for e in callback.streamed] == [4, 8, 20]


def test_only_rank_zero_reports(monkeypatch):
    from gcrp_assets.trainer.train import ReportProgress

    monkeypatch.setenv("RANK", "1")
    log = Log()
    callback = ReportProgress(log, tokens=lambda: 0)
    state = SimpleNamespace(global_step=0, max_steps=4)
    callback.on_train_begin(None, state, None)
    callback.on_log(None, state, SimpleNamespace(should_log=True), logs={"loss": 1.0, "learning_rate": 1e-3})
    assert log.lines == [] and callback.streamed == []
