"""``model.init_from_hf=DIR`` on the command line: the model shape and tokenizer come from ``DIR``.

Applied to the composed Hydra config before it is converted to typed dataclasses, so range and
cross-field checks (``parallel.tp`` divides the heads, ...) see the HF model's shape. Keys given on the
command line (``model.max_seq_len=512``, ``data.tokenizer.path=...``) are kept as given.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["apply_init_from_hf", "override_keys"]


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The dotted keys that command-line ``overrides`` set (``+``/``++``/``~`` prefixes removed)."""
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


def apply_init_from_hf(dict_cfg, overrides: Iterable[str]) -> None:
    """Fill ``model.*`` and ``data.tokenizer`` of ``dict_cfg`` (a DictConfig) in place from ``model.init_from_hf``.

    Raises:
        ConfigError: the directory is missing or holds an unsupported model (one line, naming it).
    """
    from omegaconf import open_dict

    hf_dir = dict_cfg.model.init_from_hf
    if not hf_dir:
        return
    # Imported only here: megatron (under nemo_rpo.models) is slow to import and noisy, and most runs do
    # not start from HF.
    from nemo_rpo.distributed.cpu_support import prepare_megatron_import

    prepare_megatron_import()
    from nemo_rpo.models.hf_io import read_hf_config
    from nemo_rpo.models.hf_mapping import check_sequence_fits, model_fields_from_hf

    explicit = override_keys(overrides)
    hf = read_hf_config(hf_dir)
    where = f"{hf_dir}/config.json"
    with open_dict(dict_cfg):
        for name, value in model_fields_from_hf(hf, where=where).items():
            if f"model.{name}" not in explicit:
                dict_cfg.model[name] = value
        if not any(k.startswith("data.tokenizer") for k in explicit):
            dict_cfg.data.tokenizer.type = "hf"
            dict_cfg.data.tokenizer.path = str(hf_dir)
    check_sequence_fits(hf, int(dict_cfg.model.max_seq_len), where=where)
