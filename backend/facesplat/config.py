"""Run configuration. The dataclasses live in core/config.py (pure Python), so the Blender add-on,
which vendors core/, reads the same defaults, bounds and choices as the CLI."""

from .core.config import (DEFAULT_PRESET, DEVICES, PRESETS, Config, ConfigError, FacesConfig,  # noqa: F401
                          FramesConfig, HeadVolumeConfig, IsolateConfig, MaskConfig, SfmConfig, TrainConfig,
                          config_hash, make_config, option_schema, validate)
