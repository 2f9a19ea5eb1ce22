"""Command-line logging: our own records at the chosen level, third-party ones kept quiet.

Some libraries log through the root logger (open_clip's ``logging.info("Loaded ViT-S-32
model config.")`` and the like). Setting the root to WARNING and only the project's loggers
to the chosen level keeps those lines out of a user's way unless they ask for debug output.
"""
from __future__ import annotations

import logging

OWN_LOGGERS = ("mmembed", "ctr_eval")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "mmembed-cli"  # the console handler this module adds (replaced on a second call)


def configure_cli_logging(level: int, console_level: int | None = None) -> None:
    """Log ``level`` and above from mmembed and ctr_eval, other libraries only warnings
    (everything when ``level`` is DEBUG); the console shows ``console_level`` and above
    (default ``level``), so that a command can keep INFO records for its log files only."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    console = logging.StreamHandler()
    console.set_name(HANDLER_NAME)
    console.setFormatter(logging.Formatter(FORMAT))
    console.setLevel(level if console_level is None else console_level)
    root.addHandler(console)
    root.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
