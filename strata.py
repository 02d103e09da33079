"""The ``strata`` command: one program, one subcommand per job.

Subcommands live next to the code they drive:
``extract`` in extractor/cli.py, ``inspect`` and ``verify`` in store/cli.py, ``probe`` in probe_engine/cli.py,
``neurons`` in probe_engine/neurons_cli.py, ``compare`` in probe_engine/compare_cli.py,
``report`` in probe_engine/report_cli.py, ``tasks`` in extractor/tasks_cli.py.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys

from store.errors import StrataError
from store.signals import Terminated, sigterm_unwinds


class OneLineErrors(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other strata error
    (``--help`` still prints the usage).  Subcommand parsers inherit the class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Python 3.11's argparse takes only -1 and -1.5 for negative numbers, so that
        # `--l1 -1e-3` or `--l2 -1,0` failed as "expected one argument" instead of reaching
        # the option's own range check.  CPython 3.12.8/3.13.1 widened the rule to any
        # '-' followed by a digit or '.digit' (gh-123945); this is that rule.
        self._negative_number_matcher = re.compile(r"-\.?\d")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from extractor import cli as extract_cli
    from extractor import tasks_cli
    from probe_engine import cli as probe_cli
    from probe_engine import compare_cli, report_cli
    from probe_engine import neurons_cli
    from store import cli as store_cli

    parser = OneLineErrors(prog="strata", description="Activation store and probe engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    extract_cli.add_parser(sub)
    store_cli.add_parsers(sub)
    probe_cli.add_parser(sub)
    neurons_cli.add_parser(sub)
    compare_cli.add_parser(sub)
    report_cli.add_parser(sub)
    tasks_cli.add_parser(sub)
    parser.commands = sub.choices  # name -> subcommand parser, for errors in its name
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would name "strata", not the subcommand whose options these are not
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    # The command line as the user typed it, recorded in provenance.
    args.argv = ["strata", *(sys.argv[1:] if argv is None else argv)]
    try:
        with sigterm_unwinds():
            return args.run(args)
    except StrataError as e:
        # one write for the whole line: the processes of an accelerate launch all report a
        # shared failure, and print's two writes (text, then newline) interleave between them
        sys.stderr.write(f"strata {args.command}: error: {e}\n")
        sys.stderr.flush()
        # zarr decodes a read's chunks as asyncio tasks: when one fails (a damaged shard)
        # the others are left pending, and asyncio logs each at exit ("Task was destroyed
        # but it is pending!") under the one-line error, which has said it all.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        return 1
    except Terminated:
        print(f"strata {args.command}: terminated (SIGTERM); rerun the same command to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"strata {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`strata inspect S | head`): stop quietly, as
        # other Unix tools do; stdout goes to /dev/null so that Python's own flush at
        # exit does not fail again (the recipe in Python's signal module docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        # what the machine refused (permissions, a full or read-only disk) is the user's to
        # fix and takes one line; any other OSError is a bug and keeps its traceback
        if e.errno not in MACHINE_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else "writing: "
        print(f"strata {args.command}: error: {where}{e.strerror}", file=sys.stderr)
        return 1


MACHINE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO}


if __name__ == "__main__":
    sys.exit(main())
