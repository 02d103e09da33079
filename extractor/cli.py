"""``strata extract`` command-line arguments."""

from __future__ import annotations

from extractor.alignment import WORD_VECTORS
from extractor.linear_kernel import KERNELS
from extractor.readers import FORMATS
from store.errors import StrataError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="run a Hugging Face model over a corpus into a store",
        description="Extract activations of every layer, per token and pooled per sentence, into a Zarr v3 store. "
                    "Re-running the same command resumes; under `accelerate launch` processes split the shards.")
    p.add_argument("--model", required=True, help="local directory or hub id of any AutoModel")
    p.add_argument("--input", required=True, help="corpus file")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="store directory to create or resume")
    p.add_argument("--columns", help="conll: names of the whitespace columns, e.g. word,pos,chunk")
    p.add_argument("--labels", help="neurox: the parallel labels file")
    p.add_argument("--layers", default="all", help="'all' or hidden-state indices such as 0,3,6 (0 = embeddings)")
    p.add_argument("--word-vector", default="last", choices=WORD_VECTORS,
                   help="subword of a word that represents it (default last, as Durrani et al.), "
                        "or 'subword' to keep every subword")
    p.add_argument("--pool", default="cls,mean", help="sentence vectors to store: cls, mean, cls,mean (default) or none")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--codec", default="lossless", help="'lossless' (blosc zstd + bitshuffle) or 'bitround:K'")
    p.add_argument("--batch-tokens", type=int, default=1024, help="padded tokens per forward pass (default 1024)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max-sentences", type=int, help="only the first N sentences")
    p.add_argument("--shard-tokens", type=int,
                   help="tokens per shard (unit of work); default ~64 MiB shards. Below the chunk (the most tokens, a power "
                        "of two, whose rows of one layer fit 1 MiB: 1,024 at hidden 384 in float16) the chunk "
                        "shrinks to it; above it, a multiple of the chunk")
    p.add_argument("--variant", help="extract from a changed model: random-init, reinit:K-, reinit:I-J, "
                                     "permute:SEED or truncate:K (see extractor/variants.py)")
    p.add_argument("--variant-seed", type=int, help="seed of random-init and reinit weights (default 0)")
    p.add_argument("--attention", choices=("cls", "none"), default="none",
                   help="cls: also store the CLS (first) token's attention row per sentence, block and head "
                        "(runs the model with eager attention)")
    p.add_argument("--linear-kernel", choices=KERNELS, default="auto",
                   help="kernel of the model's linear layers on CPU: onednn (AVX-512 where the CPU has it; "
                        "default on CPU) or torch's default (MKL); they agree to ~1e-5, not bitwise")
    p.add_argument("--threads", type=int,
                   help="CPU: run this many batches at once, one torch thread each (default: torch's thread "
                        "count, usually the cores); the stored bytes do not depend on it")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(run=run)


def options_from_args(args):
    from extractor.run import ExtractOptions

    kinds = tuple(x.strip() for x in args.pool.split(","))
    if "" in kinds:  # '' or 'cls,': said nothing, which is not 'none'
        raise StrataError(f"--pool: expected cls, mean, cls,mean or none, got {args.pool!r}")
    repeated = [k for i, k in enumerate(kinds) if k in kinds[:i]]
    if repeated:
        raise StrataError(f"--pool: {repeated[0]} is given more than once in {args.pool!r}")
    if "none" in kinds and len(kinds) > 1:
        raise StrataError(f"--pool: 'none' stores no sentence vectors and takes no other kind, got {args.pool!r}")
    pool = () if kinds == ("none",) else kinds
    return ExtractOptions(
        model=args.model, input=args.input, format=args.format, out=args.out,
        columns=[c.strip() for c in args.columns.split(",")] if args.columns else None, labels=args.labels, layers=args.layers,
        word_vector=args.word_vector, pool=pool, dtype=args.dtype, codec=args.codec,
        batch_tokens=args.batch_tokens, device=args.device, max_sentences=args.max_sentences,
        shard_tokens=args.shard_tokens, variant=args.variant, variant_seed=args.variant_seed,
        attention=None if args.attention == "none" else args.attention, linear_kernel=args.linear_kernel,
        threads=args.threads)


def run(args) -> int:
    import json

    from store.signals import signals_held

    with signals_held():  # an interrupt inside torch's import aborts the process
        from extractor.run import extract
    from store.summary import format_summary, summarize

    result = extract(options_from_args(args), args.argv)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['status']}: {result['path']}  ({result['sentences']:,} sentences, {result['tokens']:,} tokens"
              + (f", {result['sentences_skipped']} skipped as too long" if result["sentences_skipped"] else "")
              + (f", {n} word{'s' * (n != 1)} with no subword read as the unknown token"
                 if (n := result.get("words_replaced_by_unk")) else "")
              + (f", {result['tokens_per_second_this_process']:,.0f} tokens/s" if result.get("seconds") else "")
              + ")")
        print(format_summary(summarize(result["path"])))
    return 0
