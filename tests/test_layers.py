"""No module imports from a layer above it (DESIGN.md, section 3).

schedules -> grids -> parameterisation and the Model -> solvers -> plan and sampling -> applications -> training ->
evaluation/demo -> cli. Every ``deis_jax`` import in every module (including imports inside
functions) is read with ``ast`` and its layer compared with the importer's.
"""

import ast
import pathlib

import pytest

import deis_jax

ROOT = pathlib.Path(deis_jax.__file__).parent
LAYERS = [  # (module prefix, layer); the longest matching prefix wins
    ("deis_jax._checks", 0),
    ("deis_jax._callables", 0),
    ("deis_jax._files", 0),
    ("deis_jax.precision", 0),
    ("deis_jax._progress", 0),
    ("deis_jax.schedules", 1),
    ("deis_jax.grids", 2),
    ("deis_jax.grid_files", 2),
    ("deis_jax.quadrature", 2),
    ("deis_jax.parameterization", 3),
    ("deis_jax.model", 3),
    ("deis_jax.thresholding", 3),
    ("deis_jax.solvers", 4),
    ("deis_jax.plan", 5),
    ("deis_jax.sampling", 5),
    ("deis_jax.adaptive", 6),
    ("deis_jax.likelihood", 6),
    ("deis_jax.inversion", 6),
    ("deis_jax.guidance", 6),
    ("deis_jax.conditioning", 6),
    ("deis_jax.learned_grids", 6),
    ("deis_jax.testing", 6),
    ("deis_jax.plots", 6),
    ("deis_jax.models", 7),
    ("deis_jax.training", 7),
    ("deis_jax.pretrained", 7),
    ("deis_jax.evaluate", 8),
    ("deis_jax.demo", 8),
    ("deis_jax.cli", 9),
    ("deis_jax", 6),  # the package's own __init__: the public sampling API, no training
]


def _layer(module: str) -> int:
    matches = [(len(p), layer) for p, layer in LAYERS if module == p or module.startswith(p + ".")]
    assert matches, f"{module} has no layer: add it to LAYERS"
    return max(matches)[1]


def _module_name(path: pathlib.Path) -> str:
    parts = ("deis_jax",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("deis_jax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("deis_jax"):
            if node.module == "deis_jax":  # from deis_jax import schedules, sample, ...
                for alias in node.names:
                    sub = f"deis_jax.{alias.name}"
                    yield sub if (ROOT / alias.name).exists() or \
                        (ROOT / f"{alias.name}.py").exists() else "deis_jax"
            else:
                yield node.module


MODULES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(p) for p in MODULES])
def test_no_import_from_a_layer_above(path):
    name = _module_name(path)
    own = _layer(name)
    above = sorted({m for m in _imports(path) if _layer(m) > own})
    assert not above, f"{name} (layer {own}) imports from layers above it: {above}"


def test_the_check_can_fail():
    """An import of the training layer from the solvers layer is caught."""
    assert _layer("deis_jax.training.trainer") > _layer("deis_jax.solvers.unipc")
    assert _layer("deis_jax.solvers") == 4 and _layer("deis_jax") == 6
