import sys

from corral_emulator.cli import main

sys.exit(main())
