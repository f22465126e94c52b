"""Preemption and time limits: a signal becomes "checkpoint at the next step boundary, then exit".

SLURM warns a job with SIGUSR1 (`--signal=USR1@<seconds>`) before its time limit, and many clusters
preempt with SIGTERM (followed by SIGKILL after KillWait). Both only set a flag here: the handler
never raises, so a second signal arriving while the checkpoint is written changes nothing, and the
save runs to its COMPLETE marker. `bind` hands the request to the trainer
(`Trainer.request_stop`), which all-reduces the flag at every step boundary because a signal may
reach only some ranks: every rank checkpoints the same step and leaves; `pretrain.py` exits 75.
"""
from __future__ import annotations

import signal
import sys

# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry". slurm/pretrain.sbatch
# requeues the job on exactly this status and on no other.
REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopSignals:
    """Installs handlers for SIGUSR1/SIGTERM that record the signal and call the bound callback.

    Installed before the trainer exists, so that a signal during set-up is kept, not fatal."""

    def __init__(self, signals=STOP_SIGNALS):
        self.received: list[str] = []
        self._callback = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received.append(signal.Signals(signum).name)
        print(f"received {signal.Signals(signum).name}: will checkpoint after the current step and exit",
              file=sys.stderr, flush=True)
        if self._callback is not None:
            self._callback()

    def bind(self, callback) -> None:
        """Call `callback` on every later signal, and now if one came already."""
        self._callback = callback
        if self.received:
            callback()

    @property
    def first(self) -> str:
        return self.received[0] if self.received else ""
