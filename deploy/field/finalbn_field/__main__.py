"""python -m finalbn_field predict ..."""

import sys

from finalbn_field.cli import main

sys.exit(main())
