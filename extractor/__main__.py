"""``accelerate launch -m extractor ARGS`` is ``strata extract ARGS`` in every process."""

import sys

from strata import main

sys.exit(main(["extract", *sys.argv[1:]]))
