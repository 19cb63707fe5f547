"""`python -m llava_moslora.train` runs one training stage."""
from .main import exit_without_teardown, main

exit_without_teardown(main())
