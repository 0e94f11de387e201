import sys

from finalbn.cli import main

sys.exit(main())
