"""Training: DSM losses, an optax trainer with EMA, orbax checkpoints, datasets, data-parallel
sharding and sample-quality metrics. See ``deis-jax train --help`` for the command line."""

from deis_jax.training.checkpoint import MARKER
from deis_jax.training.checkpoint import RefusedError
from deis_jax.training.checkpoint import checkpoint_dir
from deis_jax.training.checkpoint import checkpoint_manager
from deis_jax.training.checkpoint import latest_step
from deis_jax.training.checkpoint import load_model
from deis_jax.training.checkpoint import restore_checkpoint
from deis_jax.training.checkpoint import save_checkpoint
from deis_jax.training.classifier import NoisyClassifier
from deis_jax.training.classifier import train_noisy_classifier
from deis_jax.training.data import DATASETS
from deis_jax.training.data import Dataset
from deis_jax.training.data import array_dataset
from deis_jax.training.data import batch_indices
from deis_jax.training.data import check_dataset
from deis_jax.training.data import get_batch
from deis_jax.training.data import load_dataset
from deis_jax.training.data import toy_2d
from deis_jax.training.losses import LOSSES
from deis_jax.training.losses import TIME_SAMPLINGS
from deis_jax.training.losses import WEIGHTINGS
from deis_jax.training.losses import check_loss_options
from deis_jax.training.losses import ddpm_loss
from deis_jax.training.losses import drop_labels
from deis_jax.training.losses import dsm_loss
from deis_jax.training.losses import edm_loss
from deis_jax.training.losses import flow_matching_loss
from deis_jax.training.losses import make_loss
from deis_jax.training.metrics import digit_classifier
from deis_jax.training.metrics import digit_quality
from deis_jax.training.metrics import energy_distance
from deis_jax.training.metrics import frechet_distance
from deis_jax.training.metrics import in_squares
from deis_jax.training.metrics import sliced_wasserstein
from deis_jax.training.presets import PRECISIONS, SIZES
from deis_jax.training.presets import default_batch_size
from deis_jax.training.presets import default_spec
from deis_jax.training.sharding import make_mesh
from deis_jax.training.sharding import replicate
from deis_jax.training.sharding import shard_batch
from deis_jax.training.spec import DiffusionSpec
from deis_jax.training.spec import schedule_from_dict
from deis_jax.training.spec import schedule_to_dict
from deis_jax.training.trainer import SCHEDULE_FIELDS
from deis_jax.training.trainer import TRAJECTORY_FIELDS
from deis_jax.training.trainer import FitResult
from deis_jax.training.trainer import TrainConfig
from deis_jax.training.trainer import TrainState
from deis_jax.training.trainer import fit
from deis_jax.training.trainer import init_state
from deis_jax.training.trainer import learning_rate
from deis_jax.training.trainer import make_eval_loss
from deis_jax.training.trainer import make_optimizer
from deis_jax.training.trainer import make_train_step

__all__ = [
    "DATASETS",
    "LOSSES",
    "TIME_SAMPLINGS",
    "MARKER",
    "PRECISIONS",
    "SCHEDULE_FIELDS",
    "SIZES",
    "TRAJECTORY_FIELDS",
    "WEIGHTINGS",
    "Dataset",
    "DiffusionSpec",
    "FitResult",
    "NoisyClassifier",
    "RefusedError",
    "TrainConfig",
    "TrainState",
    "array_dataset",
    "batch_indices",
    "check_dataset",
    "check_loss_options",
    "checkpoint_dir",
    "checkpoint_manager",
    "ddpm_loss",
    "drop_labels",
    "default_batch_size",
    "default_spec",
    "digit_classifier",
    "digit_quality",
    "dsm_loss",
    "edm_loss",
    "flow_matching_loss",
    "energy_distance",
    "fit",
    "frechet_distance",
    "get_batch",
    "in_squares",
    "init_state",
    "latest_step",
    "learning_rate",
    "load_dataset",
    "load_model",
    "make_eval_loss",
    "make_loss",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "replicate",
    "restore_checkpoint",
    "save_checkpoint",
    "schedule_from_dict",
    "schedule_to_dict",
    "shard_batch",
    "sliced_wasserstein",
    "toy_2d",
    "train_noisy_classifier",
]
