"""Saved settings (study.json): the distribution a study's samples were drawn from. A rerun with
other settings is refused rather than mixing two distributions in one output directory."""

from __future__ import annotations

import json
from pathlib import Path

from study.config import StudyConfig
from study.errors import StudyError
from study.output.files import SETTINGS_FILE, write_atomically


def load_settings(output_dir: Path) -> dict[str, object]:
    path = output_dir / SETTINGS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StudyError(f"{path} is not valid JSON ({exc.msg}); restore it or use another --output-dir") from None


def check_settings(output_dir: Path, settings: dict[str, object], has_samples: bool) -> None:
    """Refuse to mix samples drawn with other settings (another distribution) into a study."""
    saved = load_settings(output_dir)
    clashes = [f"{k}={saved[k]!r} (now {v!r})" for k, v in settings.items() if k in saved and saved[k] != v]
    if has_samples and clashes:
        raise StudyError(
            f"{output_dir} holds samples drawn with {', '.join(clashes)}; "
            "use another --output-dir, or the same settings to resume"
        )


def save_settings(output_dir: Path, settings: dict[str, object]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings, indent=2) + "\n"
    write_atomically(output_dir / SETTINGS_FILE, text)


def settings_of(config: StudyConfig) -> dict[str, object]:
    s = config.sampling
    settings: dict[str, object] = {
        "endpoint": s.endpoint,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "seed": s.seed,
        "detector": config.detector,
    }
    if config.detector is not None and config.detector.startswith("judge:"):
        settings["judge_template"] = config.judge.template
        if config.judge.model is not None:
            settings["judge_model"] = config.judge.model
    if config.model is not None:
        settings["model"] = config.model
    return settings
