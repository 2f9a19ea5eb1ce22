"""Command-line logging: our own records at the chosen level, third-party ones kept quiet.

Some libraries log through the root logger (open_clip's ``logging.info("Loaded ViT-S-32
model config.")`` and the like). Setting the root to WARNING and only the project's loggers
to the chosen level keeps those lines out of a user's way unless they ask for debug output.
"""
from __future__ import annotations

import logging

OWN_LOGGERS = ("mmembed", "ctr_eval")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_cli_logging(level: int) -> None:
    """Log ``level`` and above from mmembed and ctr_eval; other libraries only warnings,
    unless ``level`` is DEBUG (then everything)."""
    logging.basicConfig(level=logging.DEBUG if level <= logging.DEBUG else logging.WARNING, format=FORMAT)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
