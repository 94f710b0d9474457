"""``python -m nemo_rpo.train`` / ``torchrun -m nemo_rpo.train``: same as ``nemo-rpo-train``."""

from nemo_rpo.cli.train import main

if __name__ == "__main__":
    main()
