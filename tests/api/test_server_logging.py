"""`lda.*` INFO lines reach the server's log after vLLM's imports lowered the root logger (no engine)."""

from __future__ import annotations

import logging

from api.server import PROJECT_LOGGER, configure_logging


def test_project_info_lines_survive_the_sagemaker_root_level():
    from model_hosting_container_standards.logging_config import configure_root_logger

    root, ours = logging.getLogger(), logging.getLogger(PROJECT_LOGGER)
    levels = root.level, ours.level, [(h, h.level) for h in root.handlers]
    try:
        configure_logging()
        configure_root_logger()  # what importing vLLM's SageMaker routes does: root to ERROR
        assert root.level == logging.ERROR
        assert logging.getLogger("lda.server").isEnabledFor(logging.INFO)
        assert not logging.getLogger("somebody.else").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
        for handler, level in levels[2]:
            handler.setLevel(level)
