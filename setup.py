"""nemo-rpo: Reward-aware Preference Optimization on Megatron-core."""

from setuptools import find_packages, setup

setup(
    name="nemo-rpo",
    version="0.1.0",
    description="Reward-aware Preference Optimization (RPO) on Megatron-core: offline, online, iterative.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nemo_rpo", "nemo_rpo.*"]),
    package_data={"nemo_rpo": ["assets/*", "conf/**/*.yaml", "conf/*.yaml"]},
    include_package_data=True,
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
