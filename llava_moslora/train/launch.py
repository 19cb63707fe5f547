"""`python -m llava_moslora.train.launch`: torchrun, ending the way a scheduler expects.

The stage scripts start training through this instead of torchrun itself; it takes torchrun's
arguments unchanged and differs in these ways:
- SIGUSR1 (SLURM's `--signal` warning before the time limit) is handled like SIGTERM
  (`--signals_to_handle`): torchrun passes it to every rank, the ranks save a checkpoint at the end of the step and stop. Left to
  its default, SIGUSR1 would kill torchrun and orphan the ranks.
- A run stopped by a signal exits with 128 + that signal (143 for SIGTERM, 130 for SIGINT, 138
  for SIGUSR1), with one line naming it, instead of torchrun's traceback and exit 1, so a job
  script or scheduler can tell "preempted, resumable" from "failed".
- A run whose ranks stopped on a mistake they said in one line (exit code 2: bad data, a bad
  checkpoint, a launch mistake) exits 2 without torchrun's failure report; one whose rank crashed
  and said so (exit code 1, train/crash.py) exits 1 with one line naming the ranks, the report
  left out too (its "error_file: <N/A>" says nothing the rank did not).
- The grace torchrun gives the ranks to save before it kills them (`--shutdown_timeout`,
  default SHUTDOWN_TIMEOUT below) is longer than torchrun's 30 s; the scheduler's own kill
  deadline still bounds it.
"""
from __future__ import annotations

import signal
import sys
from typing import Optional, Sequence

from ..names import MISTAKE_EXIT_CODE

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
TORCHRUN_SIGNALS = ("SIGHUP", "SIGQUIT")  # torchrun's own, kept
SHUTDOWN_TIMEOUT = 300
CRASHED = 1  # train.crash.FAILED: a rank crashed and said where


def signal_exit_code(failures) -> Optional[int]:
    """128 + N when every failed rank ended with 128 + N for a stop signal N, else None."""
    codes = {failure.exitcode for failure in failures.values()}
    stops = {128 + int(getattr(signal, name)) for name in STOP_SIGNALS}
    return codes.pop() if len(codes) == 1 and codes <= stops else None


def with_defaults(argv: list[str]) -> list[str]:
    """torchrun's arguments with our --signals_to_handle and --shutdown_timeout unless given."""
    given = {a.split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    defaults = {"__signals_to_handle": ",".join(STOP_SIGNALS + TORCHRUN_SIGNALS),
                "__shutdown_timeout": str(SHUTDOWN_TIMEOUT)}
    return [f"--{name[2:]}={value}" for name, value in defaults.items() if name not in given] + argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(with_defaults(list(sys.argv[1:] if argv is None else argv)))
    except SignalException as stopped:
        name = signal.Signals(stopped.sigval).name
        print(f"[llava-moslora] launcher: stopped by {name}; the ranks saved what they could "
              "(continue with --resume_from_checkpoint auto)", file=sys.stderr, flush=True)
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:
        codes = {failure.exitcode for failure in failed.failures.values()}
        if codes == {MISTAKE_EXIT_CODE}:
            return MISTAKE_EXIT_CODE  # the ranks said what was wrong, in one line: no report on top
        if CRASHED in codes and codes <= {CRASHED, MISTAKE_EXIT_CODE} | {128 + int(getattr(signal, n)) for n in STOP_SIGNALS}:
            ranks = sorted(rank for rank, failure in failed.failures.items() if failure.exitcode == CRASHED)
            print(f"[llava-moslora] launcher: the run failed (ranks {', '.join(map(str, ranks))} exited 1; the "
                  "failing rank said why above); resume with --resume_from_checkpoint auto", file=sys.stderr, flush=True)
            return CRASHED
        code = signal_exit_code(failed.failures)
        if code is None:
            raise
        print(f"[llava-moslora] launcher: the ranks stopped on {signal.Signals(code - 128).name} "
              "(continue with --resume_from_checkpoint auto)", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
