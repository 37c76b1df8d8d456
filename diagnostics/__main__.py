"""`python -m torch_diagnose ...` is the `diagnose` command."""
import sys

from .cli import main

sys.exit(main())
