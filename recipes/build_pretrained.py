"""Regenerate the pretrained models shipped in ``deis_jax/assets/pretrained`` from
:data:`deis_jax.pretrained.RECIPES`: one ``deis-jax train`` run per asset, then its export.

    python recipes/build_pretrained.py                  # every asset
    python recipes/build_pretrained.py digits pinwheel  # some
    python recipes/build_pretrained.py --work /tmp/pretrained_runs

A run resumes from its checkpoint in the work directory (the recorded wall time is then that
of the last invocation only; delete the work directory for a clean timing).
"""

from __future__ import annotations

import argparse
import os
import time

from deis_jax import cli, pretrained
from deis_jax._progress import PROGRESS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(pretrained.RECIPES),
                        help=f"assets to build (default: all of {list(pretrained.RECIPES)})")
    parser.add_argument("--work", default="/tmp/deis_jax_pretrained",
                        help="checkpoint directory for the training runs")
    parser.add_argument("--progress", default="auto", choices=PROGRESS)
    args = parser.parse_args()
    for name in args.names:
        if name not in pretrained.RECIPES:
            parser.error(f"unknown asset {name!r}; recipes: {list(pretrained.RECIPES)}")
    for name in args.names:
        recipe = pretrained.RECIPES[name]
        ckpt = os.path.join(args.work, name)
        t0 = time.perf_counter()
        status = cli.main(["train", *recipe, "--out", ckpt, "--progress", args.progress])
        if status:
            raise SystemExit(f"training {name} failed (exit status {status})")
        rec = pretrained.export(ckpt, name, recipe=recipe,
                                wall_seconds=time.perf_counter() - t0)
        print(f"{name}: step {rec['step']}, {rec['n_params']} parameters, "
              f"train {rec['train_seconds']}s, wall {rec['wall_seconds']}s")


if __name__ == "__main__":
    main()
