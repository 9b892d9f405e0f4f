import sys

from slimship.cli import main

sys.exit(main())
