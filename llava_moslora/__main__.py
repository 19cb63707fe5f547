"""`python -m llava_moslora` is the `llava-moslora` command."""
import sys

from .cli import main

sys.exit(main())
