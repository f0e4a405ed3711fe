"""Third-party output is dropped while silenced and pvq's own passes; everything is restored afterwards."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from figures.quiet import THIRD_PARTY_LOGGERS, quiet_unless, third_party_silenced

EMITTERS = """
import logging
import sys

from tqdm import tqdm


def emit(tag):
    print(f"{tag} print", file=sys.stderr)
    for _ in tqdm(range(2), desc=f"{tag} bar", file=sys.stderr, disable=False):
        pass
    logging.getLogger(__name__).warning(f"{tag} log warning")
"""


def function_in_module(module_name: str) -> Callable[[str], None]:
    """``emit(tag)`` defined as if in module ``module_name``: prints, draws a tqdm bar and logs a warning."""
    namespace = {"__name__": module_name}
    exec(compile(EMITTERS, f"<{module_name}>", "exec"), namespace)
    return namespace["emit"]


def without_root_handlers(action: Callable[[], None]) -> None:
    """Run ``action`` with no handler on the root logger (as in `pvq`), so unhandled records reach stderr
    through logging's last-resort handler; pytest's own handlers are put back afterwards."""
    saved = logging.root.handlers[:]
    logging.root.handlers.clear()
    try:
        action()
    finally:
        logging.root.handlers[:] = saved


def test_pvq_output_passes_and_third_party_output_is_dropped(capsys):
    lm_eval_emit, pvq_emit = function_in_module("lm_eval.api.task"), function_in_module("measure.toy_study")

    def both() -> None:
        with third_party_silenced():
            lm_eval_emit("lm-eval")
            pvq_emit("pvq")

    without_root_handlers(both)
    err = capsys.readouterr().err
    assert "lm-eval" not in err
    assert all(f"pvq {what}" in err for what in ("print", "bar", "log warning"))


def test_without_silence_third_party_output_shows(capsys):
    emit = function_in_module("lm_eval.api.task")

    def verbose() -> None:
        with quiet_unless(True):
            emit("lm-eval")

    without_root_handlers(verbose)
    err = capsys.readouterr().err
    assert all(f"lm-eval {what}" in err for what in ("print", "bar", "log warning")), err


def test_levels_and_stderr_are_restored_and_a_kept_stand_in_writes_through(capsys):
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    stderr = sys.stderr
    with third_party_silenced():
        assert sys.stderr is not stderr and sys.stderr == stderr  # one terminal for tqdm
        assert all(logging.getLogger(name).level == logging.ERROR for name in THIRD_PARTY_LOGGERS)
        handler = logging.StreamHandler()  # binds the stand-in, as a library's handler created meanwhile does
    assert sys.stderr is stderr
    assert {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS} == levels
    handler.emit(logging.LogRecord("lm_eval", logging.WARNING, __file__, 1, "later record", None, None))
    assert "later record" in capsys.readouterr().err
