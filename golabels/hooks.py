"""Benchmark hooks: the pieces of golabels below its commands that benchmarks/ measure and that
a script may build on (docs/python.md, "Benchmark hooks", says what each is for). Anything else
in golabels_cli is internal and may change without notice; a benchmark imports only from
`golabels` and from here (tests/test_architecture.py checks it).

Importing this module loads PyTorch.
"""

from golabels_cli.checkpoint import load_model, save_model
from golabels_cli.console import setup_logging
from golabels_cli.choices import STUDENT_RECIPE
from golabels_cli.choices import parse_recipe_name as parse_method
from golabels_cli.data import (ImageSet, InfiniteDraws, TrainImages, class_counts, decode_all, decode_for_training, scan_labeled,
                               scan_unlabeled, train_transform)
from golabels_cli.decoded import decode_images
from golabels_cli.device import pick_device
from golabels_cli.device_batches import batch_loader, device_batches, loader_crop
from golabels_cli.export import verification_batch
from golabels_cli.features import backbone_features, image_keys, model_key
from golabels_cli.images import IMAGE_EXTENSIONS, image_files, load_rgb, resize_shorter, scale_size
from golabels_cli.inference import autocast
from golabels_cli.label_shift import SHIFT_WARNING, total_variation
from golabels_cli.methods import Adversary, Batch, Objective, StepOutput, TargetLoss, adversarial_loss, get_method, grad_reverse, grl_coeff
from golabels_cli.model_info import ModelInfo
from golabels_cli.models import Classifier, HeadEnsemble, create_backbone, resolve_data_config
from golabels_cli.predict import open_predictor, predict_batches
from golabels_cli.remedies import REMEDIES
from golabels_cli.report import correlations, spearman
from golabels_cli.synthetic import make_two_domains
from golabels_cli.training import LoopState, Step, Training, build, step_of
from golabels_cli.training.search import candidate_agreements, candidate_record, pick as search_pick, save_teacher
from golabels_cli.training.selection import validate as validate_snapshot
from golabels_cli.training.target_estimate import eval_shift, warn_on_label_shift
from golabels_cli.training.teacher import refine as refine_labels
from golabels_cli.validators import LABEL_FREE, oriented

__all__ = [
    # data: the folders a run reads, as it reads them
    "IMAGE_EXTENSIONS", "image_files", "load_rgb", "resize_shorter", "scale_size", "scan_labeled", "scan_unlabeled", "class_counts",
    "ImageSet", "TrainImages", "InfiniteDraws", "decode_for_training", "train_transform", "make_two_domains",
    # the batched training data path: images decoded once, batches augmented on the device
    "decode_all", "decode_images", "batch_loader", "device_batches", "loader_crop",
    # models and features: the backbone a run builds, its cached features, a model file without training
    "create_backbone", "resolve_data_config", "backbone_features", "image_keys", "model_key", "Classifier", "ModelInfo", "save_model",
    "verification_batch", "pick_device", "autocast", "load_model", "HeadEnsemble",
    # one training step: a run's wiring without its loop, to time or probe it
    "build", "Training", "Step", "step_of", "LoopState", "validate_snapshot", "eval_shift", "warn_on_label_shift",
    # the methods: a recipe's objective or an adversarial loss for a model of your own (the toy problems)
    "parse_method", "get_method", "Objective", "StepOutput", "TargetLoss", "Adversary", "Batch", "adversarial_loss", "grad_reverse",
    "grl_coeff", "REMEDIES",
    # validators and label shift: the figures a sweep compares
    "LABEL_FREE", "oriented", "correlations", "spearman", "SHIFT_WARNING", "total_variation",
    # --method auto: what the search keeps of a candidate run, its rule for what ships, the agreement
    # each candidate has with the ensemble (--search-pick agreement), the teacher of its student
    "candidate_record", "search_pick", "candidate_agreements", "save_teacher", "STUDENT_RECIPE",
    # the student's labels: a teacher's predictions of the target refined by the nearest neighbours
    "refine_labels",
    # prediction without the command line's output
    "open_predictor", "predict_batches",
    # golabels' one-line log handler on stderr, as the commands set it up
    "setup_logging",
]
