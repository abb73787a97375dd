"""adpulse-batch: product catalogs in, ad copy out, with an open, self-hosted model."""

import os

__version__ = "0.1.0"

# MKL's strict reproducible mode makes a matrix product's rows independent of how many rows
# are multiplied together, so on CPU a row's greedy ad does not depend on its batch. It must
# be chosen before torch makes its first MKL call, hence here; it costs no speed we measured.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
