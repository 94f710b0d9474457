"""Registers the typed schema with Hydra's ConfigStore and composes/converts configs.

Kept apart from :mod:`nemo_rpo.config.schema` so that the schema module imports no Hydra.
"""

from __future__ import annotations

import os
from pathlib import Path

from nemo_rpo.config.schema import ConfigError, RPOConfig

SCHEMA_NAME = "rpo_schema"


def conf_dir() -> Path:
    """The Hydra config tree every entry point composes from; the one place that looks it up.

    ``$NEMO_RPO_CONF_DIR`` when set; else the copy an installed wheel carries (``nemo_rpo/conf``,
    written by setup.py's build step); else the checkout's top-level ``conf/`` (an editable install).
    """
    override = os.environ.get("NEMO_RPO_CONF_DIR")
    package = Path(__file__).resolve().parents[1]
    candidates = [Path(override)] if override else [package / "conf", package.parent / "conf"]
    for path in candidates:
        if (path / "train.yaml").is_file():
            return path
    searched = " or ".join(str(p) for p in candidates)
    raise ConfigError(f"conf: no train.yaml in {searched} (set NEMO_RPO_CONF_DIR to a conf/ directory)")


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RPOConfig)


def reject_unknown_keys(cfg, prefix: str = "") -> None:
    """Raise for a key the schema does not have; ``+key=value`` adds such keys, which conversion drops.

    Raises:
        ConfigError: ``foo: unknown key, RPOConfig has no 'foo' ...``, naming the first one found.
    """
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return  # a plain dict node (none in our schemas) takes any key
    names = {f.name for f in dataclasses.fields(schema)}
    for key in cfg.keys():
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key, {schema.__name__} has no {key!r} "
                              "('+' cannot add keys the schema lacks)")  # fmt: skip
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            reject_unknown_keys(child, f"{prefix}{key}.")


def to_typed(cfg) -> RPOConfig:
    """DictConfig → RPOConfig, running every ``__post_init__`` check."""
    from omegaconf import OmegaConf

    reject_unknown_keys(cfg)
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, RPOConfig):
        raise ConfigError(f"config: expected an RPOConfig, got {type(obj).__name__}")
    return obj


def compose_config(overrides: list[str], config_name: str = "train"):
    """Compose ``conf/<config_name>.yaml`` with command-line ``overrides`` → DictConfig (no output dirs)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def load_typed_config(overrides: list[str], config_name: str, schema_name: str, schema: type):
    """Compose ``conf/<config_name>.yaml`` over ``schema`` (registered as ``schema_name``) -> a ``schema``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=schema_name, node=schema)
    cfg = compose_config(overrides, config_name)
    reject_unknown_keys(cfg)
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, schema):
        raise ConfigError(f"config: expected a {schema.__name__}, got {type(obj).__name__}")
    return obj


def load_config(overrides: list[str], config_name: str = "train") -> RPOConfig:
    return to_typed(compose_config(overrides, config_name))


def describe_error(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf/config error: what and where, without a traceback."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, ConfigError):
        return f"config: {exc}"
    if isinstance(exc, OmegaConfBaseException):
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        key = getattr(exc, "full_key", None)
        return f"config: {key + ': ' if key else ''}{msg}"
    # Hydra's errors carry several lines; the first says what, the cause (if any) says why.
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    options = getattr(exc, "options", None)  # MissingConfigException: a config group's choices
    if options:
        return f"config: {first.rstrip('.')}; choose one of {', '.join(options)}"
    cause = exc.__cause__
    why = next((line.strip() for line in str(cause).splitlines() if line.strip()), "") if cause else ""
    return f"config: {first.rstrip('.')}" + (f": {why}" if why and why not in first else "")
