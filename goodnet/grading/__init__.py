"""Grade a folder of submitted models (see :mod:`goodnet.grading.runner`)."""

from goodnet.grading.runner import *  # noqa: F401,F403
