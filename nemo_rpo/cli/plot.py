"""``nemo-rpo-plot EXP_DIR``: PNG curves of a run's metrics.jsonl (needs the ``plot`` extra).

nemo-rpo-plot runs/default                 # writes runs/default/curves.png
nemo-rpo-plot runs/a runs/b --out cmp.png  # several runs on the same axes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemo_rpo.training.plots import plot_runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("exp_dirs", nargs="+")
    parser.add_argument("--out", default=None, help="PNG path (default: <first exp_dir>/curves.png)")
    args = parser.parse_args(argv)
    try:
        out = plot_runs(args.exp_dirs, args.out or Path(args.exp_dirs[0]) / "curves.png")
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ImportError:
        print("error: plotting needs matplotlib: pip install 'nemo-rpo[plot]'", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
