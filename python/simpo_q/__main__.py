import sys

from simpo_q.cli import main

sys.exit(main())
