import sys

from hoopy.cli import main

sys.exit(main())
