"""A study folder's layout: every file name, defined once, and the one atomic write.

A study folder (`lda study` / `lda explore -o DIR`) holds the samples and their scores (collect
writes them), the settings they were drawn with, and what is written for people (summary, plot,
report). `lda mine --corpus` writes its own folder, and `lda monitor` one folder per checkpoint (each
a study folder) beside its own outputs. This module imports nothing of study, so that collect (which
writes the samples and scores) and output may both read it; the layout test allows exactly that.
"""

from __future__ import annotations

import os
from pathlib import Path

# A study folder
SAMPLES_FILE = "samples.jsonl"
"""One judged answer a line, appended as each is drawn (`collect.store`)."""
SCORES_FILE = "scores.jsonl"
"""Per-token attribution of each sample, keyed like the samples (`collect.scoring`)."""
SETTINGS_FILE = "study.json"
"""The distribution the samples were drawn from (`collect.settings`)."""
SUMMARY_FILE = "summary.json"
"""The per-alpha table, the themes and the hypothesis (`output.summary`)."""
PLOT_FILE = "rate_vs_alpha.png"
REPORT_FILE = "report.html"

# `lda mine --corpus` (its summary is SUMMARY_FILE too)
CORPUS_FILE = "corpus.jsonl"
"""The generated corpus, when none was given (`--corpus` reads the same shape back)."""
CORPUS_SCORES_FILE = "corpus_scores.jsonl"

# `lda monitor`: RUN_DIR/monitor/ holds these, and one study folder per checkpoint
MONITOR_JSON = "monitor.json"
MONITOR_PNG = "monitor.png"
MONITOR_HTML = "monitor.html"
CHECKPOINT_DONE_FILE = "checkpoint.json"
"""Written into a checkpoint's study folder once all its samples are drawn: a re-run skips it."""
SERVER_LOG_FILE = "server.log"
"""The log of the pair started for a full-weight checkpoint, in that checkpoint's study folder."""


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a reader, or an interrupt, sees the old file or the
    new one, never half of one. The temporary file is a hidden sibling (named by this process, so
    that two writers do not share it), removed on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
