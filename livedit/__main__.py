import sys

from livedit.cli import main

sys.exit(main())
