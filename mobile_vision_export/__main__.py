"""python -m mobile_vision_export: the export command (as mobile-vision-export and python -m pipeline.export)."""

import sys

from mobile_vision_export.pipeline.export import main

sys.exit(main())
