"""Entry script for multi-process workers: launchers (torchrun, paddle.distributed.launch) start a
script path, and this one runs ``dualml <command> ...`` with absolute imports."""
import sys

from dualml.cli import main

if __name__ == "__main__":
    sys.exit(main())
