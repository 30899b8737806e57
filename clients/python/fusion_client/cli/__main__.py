"""``python -m fusion_client.cli``: the same as the ``fusion`` command."""

import sys

from fusion_client.cli import main

sys.exit(main())
