import sys

from imet.cli import main

sys.exit(main())
