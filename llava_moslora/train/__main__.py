"""`python -m llava_moslora.train` runs one training stage."""
from .main import exit_without_teardown, run

exit_without_teardown(run())
