import sys

from mcf_fast.cli import main

sys.exit(main())
