"""MkDocs hook: publish ``benchmarks/results/`` (markdown tables and plots) under ``results/``.

The benchmark scripts write their tables to ``benchmarks/results/``; this hook adds those files
to the site as they are (no copy in ``docs/``), so the pages can link to
``results/accuracy.md`` and the tables' own image links resolve.
"""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File

RESULTS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def on_files(files, config):
    for path in sorted(RESULTS.iterdir()):
        if path.suffix in (".md", ".png"):
            files.append(File.generated(config, f"results/{path.name}", abs_src_path=str(path)))
    return files
