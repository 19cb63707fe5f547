"""`python -m llava_moslora.train` runs one training stage."""
import sys

from .main import main

sys.exit(main())
