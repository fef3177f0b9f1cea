"""`python -m gateway`: the same as the `webrtc-gateway` command."""

import sys

from gateway.cli import main

sys.exit(main())
