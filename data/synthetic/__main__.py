"""``python -m data.synthetic --out DIR --n N [...]``: see :mod:`data.synthetic.cli`."""

import sys

from data.synthetic.cli import main

if __name__ == "__main__":
    sys.exit(main())
