"""`make train TASK=... PRESET=... ARGS=...`: parse the config, warn where it will be slow, train.

`--run.resume <dir>` alone reopens a run with its saved config.json; other keys on the command line
override it (and `resume_conflicts` refuses those that would change the networks or the data). A known
failure prints one paragraph and writes its traceback to `<run dir>/logs/`.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

from common.config import ConfigError
from deploy.run.config import parse_quietly, slow_on_this_machine
from deploy.run.errors import known_errors, report
from deploy.run.forecast import CPU_PRESET_HINT
from deploy.run.signals import stop_with_parent


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must reach the driver as KeyboardInterrupt (it stops the run and checkpoints), even when a
    # parent shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_with_parent()  # a seed of `make reproduce`: stop (checkpointing) when the harness dies
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A log handler that cannot write (W&B's debug log on a full disk) stays silent instead of printing a
    # "--- Logging error ---" traceback per record on the terminal.
    logging.raiseExceptions = False
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_quietly(argv)
    except ConfigError as exc:
        report(exc, argv)
        return 2
    if slow_on_this_machine(cfg):
        logging.warning("the paper preset without a GPU is very slow (about a second per update on 2 cores, "
                        "%s model pre-training updates first): the run measures its first updates and then says "
                        "what it will take on this machine. %s", f"{cfg.learner.model_pretrain_steps:,}", CPU_PRESET_HINT)
    from deploy.run.launch import train  # imports Ray; kept out of the CLI's --help path

    try:
        summary = train(cfg)
    except known_errors() as exc:
        report(exc, argv)
        return 2
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing to checkpoint", file=sys.stderr)
        return 130
    if summary["interrupted"]:  # before the summary, which stays the last thing printed (scripts parse it)
        print(f"stopped by {summary['stopped_by']}; checkpoint {summary['checkpoint']}. Continue the run with:\n"
              f"  python -m deploy.train --run.resume {summary['run_dir']}   "
              f"(or make train ARGS=\"--run.resume {summary['run_dir']}\")", file=sys.stderr, flush=True)
    print(json.dumps({"summary": summary}, indent=2, default=str))
    # A preempted run (SIGTERM) must read as unfinished to whatever scheduled it; Ctrl-C is the user's choice.
    return 143 if summary["stopped_by"] == "SIGTERM" else 0


if __name__ == "__main__":
    sys.exit(main())
