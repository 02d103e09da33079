"""``strata tasks``: derive a sentence-level probing task from a corpus (see sentence_tasks.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from store.errors import StrataError

from extractor.readers import FORMATS


def add_parser(subparsers) -> None:
    from extractor.sentence_tasks import DEFAULT_LENGTH_EDGES, TASKS

    p = subparsers.add_parser(
        "tasks", help="write a sentence-level probing task (SentEval TSV) derived from a corpus",
        description="Conneau et al.'s bigram-shift or sentence-length task from any corpus, as a SentEval "
                    "TSV (split, label, sentence) that `strata extract --format senteval` reads.")
    p.add_argument("task", choices=TASKS)
    p.add_argument("--train", required=True, help="corpus whose sentences become split tr")
    p.add_argument("--dev", help="corpus whose sentences become split va")
    p.add_argument("--test", help="corpus whose sentences become split te")
    # senteval is this command's output; neurox needs a parallel labels file the tasks do not use
    p.add_argument("--format", default="conllu", choices=[f for f in FORMATS if f not in ("senteval", "neurox")],
                   help="format of the corpora (default conllu)")
    p.add_argument("--columns", help="conll: names of the whitespace columns")
    p.add_argument("--out", required=True, help="the TSV to write")
    p.add_argument("--seed", type=int, help="bigram-shift: which sentences and positions are swapped (default 0)")
    p.add_argument("--length-bins",
                   help="sentence-length: bin edges in words, bin k = [edge k, edge k+1) (default "
                        f"{','.join(map(str, DEFAULT_LENGTH_EDGES))}: SentEval's 5-8, 9-12, 13-16, 17-20, 21-25, 26-28)")
    p.set_defaults(run=run)


#: The options only one task reads: given to the other, they would be ignored.
TASK_OPTIONS = {"seed": "bigram-shift", "length_bins": "sentence-length"}


def run(args) -> int:
    from extractor.sentence_tasks import DEFAULT_LENGTH_EDGES, parse_edges, write_task

    for option, task in TASK_OPTIONS.items():
        if getattr(args, option) is not None and args.task != task:
            raise StrataError(f"--{option.replace('_', '-')}: only {task} uses it, not {args.task}")
    seed = 0 if args.seed is None else args.seed
    if seed < 0:  # numpy's generators take none
        raise StrataError(f"--seed: must be >= 0, got {seed}")
    edges = DEFAULT_LENGTH_EDGES if args.length_bins is None else parse_edges(args.length_bins)
    inputs = {split: path for split, path in (("train", args.train), ("dev", args.dev), ("test", args.test)) if path}
    for split in ("dev", "test"):
        if split in inputs and Path(inputs[split]).resolve() == Path(args.train).resolve():
            print(f"strata tasks: warning: --{split} is the --train file: both splits hold the same sentences, "
                  f"so a probe's {split} accuracy measures memorization", file=sys.stderr)
    report = write_task(args.task, inputs, args.format, args.out, seed=seed, edges=edges,
                        columns=args.columns)
    written = ", ".join(f"{s} {n}" for s, n in report.written.items())
    left = sum(report.left_out.values())
    classes = ", ".join(f"{c} {n}" for c, n in sorted(report.classes.items()))
    print(f"{args.out}: {args.task}, sentences written: {written}; left out: {left}; classes: {classes}"
          + (f"; words with whitespace written with _: {report.words_with_whitespace}"
             if report.words_with_whitespace else ""))
    return 0
