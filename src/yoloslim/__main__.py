import sys

from yoloslim.cli import main

sys.exit(main())
