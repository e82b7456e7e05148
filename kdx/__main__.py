import sys

from kdx.cli import main

sys.exit(main())
