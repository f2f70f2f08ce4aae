"""`python -m trainer EXPERT_DIR [--max-steps N] [--device cpu|cuda] [--seed S]`."""

import sys

from trainer.cli import main

sys.exit(main())
