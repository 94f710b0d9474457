"""Every shipped YAML composes and converts to the typed config; bad values fail with one line."""

import pathlib
import subprocess
import sys

import pytest

from nemo_rpo.config.schema import ConfigError, LossConfig, RPOConfig
from nemo_rpo.config.store import conf_dir, load_config
from nemo_rpo.losses import LOSSES

CONF = pathlib.Path(conf_dir())
GROUPS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("loss", "model", "experiment", "mode")
}


@pytest.mark.parametrize("name", GROUPS["loss"])
def test_every_loss_preset_composes(name):
    cfg = load_config([f"loss={name}"])
    assert isinstance(cfg, RPOConfig)
    assert cfg.loss.name == name  # the group entry selects that loss, nothing else
    assert cfg.k == (2 if LOSSES[name].pairwise else 4)  # the registry says which losses are pairwise


@pytest.mark.parametrize("name", GROUPS["model"])
def test_every_model_composes(name):
    assert isinstance(load_config([f"model={name}"]).model.num_layers, int)


@pytest.mark.parametrize("name", GROUPS["experiment"])
def test_every_experiment_composes(name):
    assert isinstance(load_config([f"experiment={name}"]), RPOConfig)


def test_issue_command_line_composes():
    cfg = load_config("loss=rpo_bwd loss.beta=0.01 loss.eta=10 k=4 parallel.tp=2 parallel.pp=2 "
                      "trainer.max_steps=100 exp_dir=runs/x data.train_path=train.jsonl".split())  # fmt: skip
    assert (cfg.loss.beta, cfg.loss.eta, cfg.k, cfg.parallel.tp, cfg.parallel.pp) == (0.01, 10.0, 4, 2, 2)
    assert (cfg.trainer.max_steps, cfg.exp_dir, cfg.data.train_path) == (100, "runs/x", "train.jsonl")


@pytest.mark.parametrize("name, extra", [("judge", []), ("http", ["reward.url=http://127.0.0.1:9000"]),
                                         ("megatron", ["reward.path=runs/rm"])])  # fmt: skip
def test_reward_model_group(name, extra):
    cfg = load_config(["mode=online", f"reward_model={name}", *extra])
    assert cfg.reward.kind == name


def test_online_iterative_command_line_composes():
    cfg = load_config(["mode=online", "schedule.iterations=2", "schedule.beta=[0.1,0.05]", "generation.top_k=5",
                       "reward.kind=http", "reward.url=http://127.0.0.1:9000"])  # fmt: skip
    assert (cfg.mode, cfg.schedule.iterations, cfg.schedule.beta) == ("online", 2, [0.1, 0.05])
    assert (cfg.generation.top_k, cfg.reward.kind, cfg.reward.url) == (5, "http", "http://127.0.0.1:9000")


def test_nemo_aligner_alias():
    assert LossConfig(name="rpo_bwd_kl").name == "rpo_bwd"


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.beta=-1", "loss.beta: must be > 0"),
        ("k=1", "k: must be >= 2"),
        ("parallel.tp=3", "parallel.tp: tp=3 must divide the attention heads"),
        ("loss.nonsense=1", "Could not override 'loss.nonsense'"),
        ("loss=rpo_sq k=4", "use loss=rpo_sqloo"),
        ("loss.name=sigmoid", "unknown loss 'sigmoid'"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("schedule.iterations=2 schedule.beta=[0.1]", "schedule.beta: needs one value per iteration"),
        (
            "schedule.iterations=2 schedule.steps=[10,20]",
            "schedule.steps: sums to 30 but trainer.max_steps is 120",
        ),
        ("schedule.pairs=best_vs_random", "schedule.pairs: best_vs_random builds K=2 pairs"),
        ("generation.top_p=0", "generation.top_p: must be in"),
        ("reward.kind=http", "reward.url: required when kind=http"),
        ("reward.kind=megatron", "reward.path: required when kind=megatron"),
        ("online.sft_warmup_steps=-1", "online.sft_warmup_steps: must be >= 0"),
    ],
)
def test_bad_values_raise_clear_errors(override, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(override.split())


@pytest.mark.parametrize("override", ["loss.nonsense=1", "loss.beta=-0.5", "k=1", "parallel.tp=3"])
def test_cli_bad_override_is_one_line_without_traceback(override):
    proc = subprocess.run(
        [sys.executable, "-m", "nemo_rpo.train", override], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: config: ")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_unknown_key_names_the_key():
    proc = subprocess.run(
        [sys.executable, "-m", "nemo_rpo.train", "loss.nonsense=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.stderr.strip()
        == "error: config: Could not override 'loss.nonsense': Key 'nonsense' not in 'LossConfig'"
    )


@pytest.mark.parametrize("override", ["+foo=1", "+trainer.foo=1", "++loss.foo=1"])
def test_added_keys_the_schema_lacks_are_errors(override):
    """Hydra lets '+' add a key to a structured config; conversion would drop it without a word."""
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigError, match=f"^{key}: unknown key, "):
        load_config([override])


@pytest.mark.parametrize("group", ["loss", "model", "experiment", "mode"])
def test_a_missing_group_choice_lists_the_choices(group):
    from nemo_rpo.config.store import compose_config, describe_error

    with pytest.raises(Exception) as err:
        compose_config([f"{group}=nope"])
    assert describe_error(err.value) == (
        f"config: In 'train': Could not find '{group}/nope'; choose one of {', '.join(GROUPS[group])}"
    )


def test_schema_checks_are_config_errors():
    with pytest.raises(ConfigError):
        RPOConfig(k=0)


def test_mode_presets_set_the_online_defaults():
    """``mode=online`` selects conf/mode/online.yaml (smaller constant lr, longer warmup, 200 steps);
    the command line still overrides it, and the schema's own check still refuses an unknown mode."""
    offline, online = load_config([]), load_config(["mode=online"])
    assert (offline.mode, offline.optim.lr, offline.optim.decay_style) == ("offline", 3e-3, "cosine")
    assert (online.mode, online.optim.lr, online.optim.warmup_steps, online.optim.decay_style,
            online.trainer.max_steps) == ("online", 3e-4, 40, "constant", 200)  # fmt: skip
    assert load_config(["mode=online", "optim.lr=1e-3"]).optim.lr == 1e-3
    with pytest.raises(ConfigError, match="^mode: unsupported mode 'offpolicy'"):
        RPOConfig(mode="offpolicy")
