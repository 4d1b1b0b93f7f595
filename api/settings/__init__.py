"""`lda serve`'s settings: flags, else the environment, else the defaults.

- `table`: every setting in one table (flag, environment variable, the field it sets).
- `values`: the server's own settings (`AccessSettings`, `RequestLimits`, `ServerSettings`).
- `parse`: flags and environment into validated `ServerSettings` (`parse_settings`).

The engine's settings land in `engine.config`'s dataclasses, whose defaults they take. The seed's
variables keep their names (MODEL_AFTER_ID, MODEL_BEFORE_ID, DEVICE, HOST, PORT); the rest are
named after the vLLM option they set.
"""

from api.settings.parse import build_parser, default_pair, parse_settings
from api.settings.table import LIMIT_ENV, SETTINGS, Setting, named_errors, setting, with_setting
from api.settings.values import AccessSettings, RequestLimits, ServerSettings

__all__ = [
    "LIMIT_ENV",
    "SETTINGS",
    "AccessSettings",
    "RequestLimits",
    "ServerSettings",
    "Setting",
    "build_parser",
    "default_pair",
    "parse_settings",
    "named_errors",
    "setting",
    "with_setting",
]
