"""The words and limits every layer shares, in one module that imports nothing heavy.

The CLI, the API's schemas, the services and the ML code all take these names from here, so a new
method or a changed limit is one edit. (Roles and job states belong to the service and live with its
database models in core/db/models.py.)
"""

from __future__ import annotations

METHODS = ("full", "lora", "adalora")
POOLINGS = ("mean", "max", "sentences", "cls")
DEFAULT_POOLING = "sentences"
HEAD_INITS = ("random", "linear_probe")
PRECISIONS = ("auto", "fp32", "bf16")
EARLY_STOPPING_METRICS = ("f1", "recall", "precision", "accuracy", "roc_auc", "specificity")
PLOT_KINDS = ("roc", "pr", "confusion", "calibration", "decision_curve")
# The tables of an evaluation report's CSV export: "models" is the main one.
REPORT_TABLES = ("models", "decision_curve", "subgroups", "confident_errors")

# Tokens per note (or per sentence, with sentence pooling) when a model does not say otherwise.
DEFAULT_MAX_LENGTH = 256
# How many models one evaluation may compare side by side.
MAX_MODELS = 8
# Subgroup analysis of an evaluation: extra CSV columns it may group by, and distinct values per column
# (more would be an identifier or free text, not a category, and groups too small to say anything).
MAX_SUBGROUP_COLUMNS = 5
MAX_SUBGROUP_VALUES = 20
# Characters in one text-valued hyperparameter (a module name, a threshold mode): names are short.
MAX_OPTION_TEXT = 100
# The name that stands for the untrained base model wherever a request lists models.
BASE = "base"
# A listed model's TF-IDF baseline (stored with every fine-tune) is "baseline:<model id>".
BASELINE_PREFIX = "baseline:"
