"""Training the YOLO OBB student with cached, online or no DINOv3 distillation (an Ultralytics OBBTrainer subclass).

Importing this package checks the installed Ultralytics: warp mode subclasses its transform API
(`get_params` / `apply_image(labels, params)` / `apply_semantic`), which 8.4.52 is the first release to have
complete (8.4.51 has it in part, 8.4.0-8.4.50 not at all) and which may change in 8.5. The tested version is
8.4.190; pyproject.toml pins the same range.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

ULTRALYTICS_MIN = (8, 4, 52)
ULTRALYTICS_BELOW = (8, 5, 0)
ULTRALYTICS_REQUIREMENT = "ultralytics>=8.4.52,<8.5"


def check_ultralytics(found: str | None = None) -> str:
    """The installed Ultralytics version, or an ImportError naming the required range and the fix."""
    if found is None:
        try:
            found = version("ultralytics")
        except PackageNotFoundError:
            raise ImportError(
                f"dinocache.train needs {ULTRALYTICS_REQUIREMENT}; it is not installed "
                f"(pip install '{ULTRALYTICS_REQUIREMENT}')"
            ) from None
    parts = tuple(int(x) for x in re.findall(r"\d+", found)[:3])
    if not ULTRALYTICS_MIN <= parts < ULTRALYTICS_BELOW:
        raise ImportError(
            f"dinocache.train needs {ULTRALYTICS_REQUIREMENT} (warp mode uses its transform API get_params / "
            f"apply_image(labels, params) / apply_semantic), found ultralytics {found}; "
            f"pip install '{ULTRALYTICS_REQUIREMENT}'"
        )
    return found


check_ultralytics()
