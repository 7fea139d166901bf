"""The throughput benchmark; the same as ``python -m fastffnn bench`` (see ``--help``)."""

import sys

from fastffnn.bench import main

if __name__ == "__main__":
    sys.exit(main())
