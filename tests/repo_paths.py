"""Where the repository and the real lab fixtures are (imported by conftest.py and by tests that run files)."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("GOODNET_SHARED", REPO.parent / "shared" / "csaw"))
