"""nemo-rpo: Reward-aware Preference Optimization on Megatron-core."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithConf(build_py):
    """Ships the top-level ``conf/`` inside the built package as ``nemo_rpo/conf``.

    ``conf/`` stays at the top of the repository, where it is edited; a wheel or a ``pip install .``
    then finds it inside the installed package (``nemo_rpo.config.store.conf_dir``). An editable
    install reads the checkout's ``conf/`` directly, so nothing is copied for it.
    """

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        src = ROOT / "conf"
        for path in sorted(src.rglob("*.yaml")):
            target = Path(self.build_lib) / "nemo_rpo" / "conf" / path.relative_to(src)
            self.mkpath(str(target.parent))
            self.copy_file(str(path), str(target))


setup(
    name="nemo-rpo",
    version="0.1.0",
    description="Reward-aware Preference Optimization (RPO) on Megatron-core: offline, online, iterative.",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nemo_rpo", "nemo_rpo.*"]),
    package_data={"nemo_rpo": ["assets/*"]},
    include_package_data=True,
    cmdclass={"build_py": BuildPyWithConf},
    install_requires=[
        # A range, never a pin: CPU development uses 2.13.0, GPU images ship their own build.
        "torch>=2.4,<3",
        "megatron-core==0.16.1",
        "hydra-core>=1.3,<1.4",
        "omegaconf>=2.3,<2.4",
        "numpy",
        # megatron-core needs these without declaring them: without psutil a torch_dist save hangs.
        "psutil",
        "tqdm",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "ruff>=0.6",
            "tensorboard",
            "matplotlib",
            "transformers>=4.45",
            "safetensors",
            "jinja2",
            "datasets>=2.19",
        ],
        "gpu": ["transformer-engine[pytorch]"],
        "hf": ["transformers>=4.45", "safetensors", "jinja2"],
        # data.train_path naming a Hugging Face dataset (save_to_disk folder, parquet / arrow / JSONL shards)
        "datasets": ["datasets>=2.19"],
        "logging": ["tensorboard", "wandb"],
        "slurm": ["hydra-submitit-launcher"],
        "plot": ["matplotlib"],
        # benchmarks/bench_step.py --trl: the TRL DPOTrainer row (measured with trl 1.16.0)
        "bench": ["trl==1.16.0", "transformers>=4.45"],
    },
    entry_points={
        "console_scripts": [
            "nemo-rpo-train=nemo_rpo.cli.train:main",
            "nemo-rpo-train-rm=nemo_rpo.cli.train_rm:main",
            "nemo-rpo-loss-demo=nemo_rpo.cli.loss_demo:main",
            "nemo-rpo-plot=nemo_rpo.cli.plot:main",
            "nemo-rpo-testbed=nemo_rpo.cli.testbed:main",
            "nemo-rpo-convert=nemo_rpo.cli.convert:main",
        ],
    },
)
