"""The one short top-level name installed, so that `python -m pipeline.export` (and .profile, .bundle, ...) works
from any folder: its modules are those of `mobile_vision_export.pipeline`. Code, ours and yours, imports
`mobile_vision_export.*`; this name exists for the command line only.
"""

import mobile_vision_export.pipeline as _pipeline

__path__ = _pipeline.__path__
