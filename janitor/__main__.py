import sys

from janitor.cli import main

sys.exit(main())
