"""The encoder (or its adapter) trains, not only the classifier head: for each method, both stages
(a first fine-tune, then a second one continuing it), in fp32 and in bf16, on the tiny random BERT,
at each stage's default learning rate.

Two kinds of notes:

* "readable" notes carry the label in one marker word (the first stage's pair, then another pair
  for the second stage). Their runs are shared by the checks that the encoder or adapter weights
  move by an amount sized to learning rate x steps, that the training loss falls, and that bf16
  autocast really applies inside the training forward pass.
* "xor" notes carry the label as the XOR of two words in one sentence (the second stage's notes
  another pair), which a linear head on the frozen encoder's features cannot read (head-only ROC
  AUC 0.60-0.62 here, 0.49 on 1,600 such notes). Within this file's budget no method learns it at
  the default learning rates either, so that test is an expected failure, not run; see its reason.

Every run sets only options that are not learning rates: fewer notes and tokens, batch size, epochs,
patience (so every epoch runs), interpolation off (the saved weights are the trained ones, not
dialled back towards the start), precision, and `freeze_encoder` for the head-only counterfactual.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ml.config import TrainConfig
from ml.finetune import TrainHooks, finetune
from ml.vocabulary import METHODS
from tests.ml.test_learning import FILLER

PRECISIONS = ("fp32", "bf16")
STAGES = ("first", "second")

# 128 training notes in batches of 4: 192 steps in the first stage, 384 in the second (its training
# notes are doubled by the default rehearsal of the parent's notes). Patience = epochs: every epoch
# runs, so the first and last epochs' losses are those of the same schedule in every case.
READABLE_OPTIONS = {"epochs": 6, "batch_size": 4, "max_length": 16, "patience": 6, "interpolation": "off"}
XOR_OPTIONS = {"epochs": 4, "max_length": 16, "patience": 4, "interpolation": "off"}

# Thresholds, each set from the measurements in the test's docstring.
MOVED_AT_LEAST = 0.25  # largest |change| / (sum of the scheduled learning rates up to the saved epoch)
LOSS_FALLS_TO = 0.7  # last epoch's mean training loss / first epoch's, at most
HEAD_ONLY_NEAR_CHANCE = 0.7  # ROC AUC of the head-only run (and of the parent) on the XOR notes, at most
BEATS_HEAD_ONLY_AUC = 0.2  # trained run's ROC AUC over the head-only run's on the XOR notes, at least


# ------------------------------------------------------------------------------------------- notes


def marker_notes(n: int, signal: tuple[str, str], noise: tuple[str, str], seed: int) -> bytes:
    """The label is which `signal` word the note mentions; one `noise` word is drawn at random."""
    rng = random.Random(seed)
    rows = ["Text,label"]
    for index in range(n):
        label = index % 2
        text = f"{rng.choice(FILLER)} . marker {signal[label]} noted . {rng.choice(noise)} seen ."
        rows.append(f"{text},{label}")
    return ("\n".join(rows) + "\n").encode()


def xor_notes(n: int, signal, noise, seed: int) -> bytes:
    """The label is the XOR of two words in one sentence (`signal`: two pairs, one word from each);
    other sentences (filler, a word from each `noise` pair) vary at random, so the frozen features'
    faint interaction of the two words is lost among them."""
    rng = random.Random(seed)
    rows = ["Text,label"]
    for _ in range(n):
        first, second = rng.randrange(2), rng.randrange(2)
        fillers = rng.sample(FILLER, 2)
        noisy = " ".join(rng.choice(pair) for pair in noise)
        rows.append(
            f"{fillers[0]} . marker {signal[0][first]} {signal[1][second]} noted . {noisy} seen . "
            f"{fillers[1]} .,{first ^ second}"
        )
    return ("\n".join(rows) + "\n").encode()


READABLE = (
    marker_notes(160, ("alpha", "beta"), ("gamma", "delta"), seed=1),
    marker_notes(160, ("gamma", "delta"), ("alpha", "beta"), seed=2),
)
XOR_PAIRS = ((("alpha", "beta"), ("gamma", "delta")), (("north", "south"), ("east", "west")))
XOR = (
    xor_notes(160, XOR_PAIRS[0], XOR_PAIRS[1], seed=3),
    xor_notes(160, XOR_PAIRS[1], XOR_PAIRS[0], seed=4),
)


# -------------------------------------------------------------------------------------------- runs


class LinearOutputDtypes:
    """Output dtypes of every nn.Linear called in training mode with gradients on (training steps;
    the linear probe and validation run in eval mode without gradients), through a global hook."""

    def __init__(self):
        self.seen: set[torch.dtype] = set()

    def __call__(self, module, _args, output):
        if isinstance(module, torch.nn.Linear) and module.training and torch.is_grad_enabled():
            self.seen.add(output.dtype)

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(self)
        return self

    def __exit__(self, *_):
        self.handle.remove()


@dataclass
class Run:
    manifest: dict
    out: Path
    epoch_losses: list[float] = field(default_factory=list)
    training_dtypes: set = field(default_factory=set)

    @property
    def auc(self) -> float:
        return self.manifest["validation_metrics"]["roc_auc"]


def train(notes: bytes, config: TrainConfig, out: Path, **kwargs) -> Run:
    run = Run({}, out)

    def record(progress) -> None:
        if progress.event == "epoch_end":
            run.epoch_losses.append(progress.loss)

    with LinearOutputDtypes() as dtypes:
        run.manifest = finetune(notes, config, out, hooks=TrainHooks(on_progress=record), **kwargs)
    run.training_dtypes = dtypes.seen
    return run


def lineage(
    notes, options: dict, method: str, root: Path, base_model: str, head_only_stages
) -> dict[str, Run]:
    """A first fine-tune and a second one continuing it, with the head-only counterfactual
    (`freeze_encoder`) beside the stages named in `head_only_stages` (a second stage's continues the
    same, normally trained, parent)."""
    runs = {}
    parent = {"parent_dir": root / "first", "parent_train_csv": notes[0]}
    for stage in STAGES:
        for suffix, extra in (("", {}), ("_head_only", {"freeze_encoder": True})):
            if suffix and stage not in head_only_stages:
                continue
            if stage == "first":
                config = TrainConfig.for_stage(1, method, {**options, **extra})
                where = {"base_model": base_model}
            else:
                config = TrainConfig.for_parent(runs["first"].manifest, {**options, **extra})
                where = parent
            assert config.lr == TrainConfig.for_stage(config.stage, method).lr, "the stage's default rate"
            runs[stage + suffix] = train(
                notes[STAGES.index(stage)], config, root / f"{stage}{suffix}", **where
            )
    return runs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is ~50x faster than two spinning threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lineages(tmp_path_factory, tiny_bert):
    """Runs shared by every test of the module, made on first use: (notes, method, precision) -> runs."""
    made: dict[tuple[str, str, str], dict[str, Run]] = {}

    def get(kind: str, method: str, precision: str) -> dict[str, Run]:
        key = (kind, method, precision)
        if key not in made:
            root = tmp_path_factory.mktemp(f"{kind}-{method}-{precision}")
            made[key] = make_lineage(kind, method, precision, root, tiny_bert)
        return made[key]

    return get


def make_lineage(kind: str, method: str, precision: str, root: Path, base_model: str) -> dict[str, Run]:
    """Readable notes: the first stage's head-only run gives the encoder's or adapter's start. XOR
    notes: both stages beside their head-only runs."""
    if kind == "readable":
        options, notes, head_only_stages = READABLE_OPTIONS, READABLE, ("first",)
    else:
        options, notes, head_only_stages = XOR_OPTIONS, XOR, STAGES
    return lineage(notes, {**options, "precision": precision}, method, root, base_model, head_only_stages)


cases = pytest.mark.parametrize(
    "method, precision", [(method, precision) for method in METHODS for precision in PRECISIONS]
)


# ------------------------------------------------------------------------------------- weights moved


def encoder_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """The saved encoder or adapter tensors, the classifier head left out."""
    adapter = model_dir / "adapter_model.safetensors"
    tensors = load_file(adapter if adapter.exists() else model_dir / "model.safetensors")
    return {key: value.float() for key, value in tensors.items() if "classifier" not in key}


def starting_tensors(runs: dict[str, Run], stage: str) -> dict[str, torch.Tensor]:
    """Where the trained tensors started: for a second fine-tune the parent's; for a first one the
    head-only run's (its encoder or adapter is frozen at the same seeded start). A first AdaLoRA
    run saves its adapter cut to the ranks it kept: the same rows (A, E) and columns (B) are taken."""
    if stage == "second":
        return encoder_tensors(runs["first"].out)
    start = encoder_tensors(runs["first_head_only"].out)
    config = runs["first"].out / "adapter_config.json"
    pattern = (json.loads(config.read_text()).get("rank_pattern") if config.exists() else None) or {}
    for key, value in start.items():
        kept = pattern.get(key.removeprefix("base_model.model.").rsplit(".", 1)[0] + ".lora_E")
        if kept is not None and len(kept) != sum(kept):
            rows = torch.tensor([index for index, keep in enumerate(kept) if keep], dtype=torch.long)
            start[key] = value[:, rows] if ".lora_B" in key else value[rows]
    return start


def scheduled_learning_rate_sum(manifest: dict) -> float:
    """lr x steps, with the schedule: the sum of the learning rates of the steps up to the saved
    (best) epoch, under linear warm-up (capped at half the run) then linear decay to zero."""
    lr, total = manifest["hyperparameters"]["lr"], manifest["total_steps"]
    warmup = min(manifest["hyperparameters"]["warmup_steps"], total // 2)
    steps = manifest["steps_run"] * manifest["best_epoch"] // manifest["epochs_run"]

    def factor(step: int) -> float:
        return step / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    return lr * sum(factor(step) for step in range(steps))


def moved_relative_to_schedule(runs: dict[str, Run], stage: str) -> float:
    before, after = starting_tensors(runs, stage), encoder_tensors(runs[stage].out)
    shared = [key for key in after if key in before and before[key].shape == after[key].shape]
    assert len(shared) == len(after), (
        f"tensors without a matching start: {sorted(set(after) - set(shared))[:5]}"
    )
    largest = max(float((after[key] - before[key]).abs().max()) for key in shared if after[key].numel())
    return largest / scheduled_learning_rate_sum(runs[stage].manifest)


@cases
@pytest.mark.parametrize("stage", STAGES)
def test_encoder_or_adapter_weights_move_by_learning_rate_times_steps(lineages, method, precision, stage):
    """AdamW moves a weight by at most about the learning rate per step, so the largest change of an
    encoder or adapter tensor, over the sum of the scheduled learning rates of the steps that made
    the saved weights, is about 1 for a weight whose gradient keeps its sign.

    Measured (first / second stage, fp32 and bf16): full 0.92 / 0.63-0.64, LoRA 0.86-0.88 / 0.94-0.99,
    AdaLoRA 1.58 / 0.87-0.93. A learning rate cut 20x gives at most ~0.08, a frozen encoder or
    adapter 0.
    """
    runs = lineages("readable", method, precision)
    ratio = moved_relative_to_schedule(runs, stage)
    assert ratio > MOVED_AT_LEAST, (
        f"{method} {stage} ({precision}): the encoder or adapter moved {ratio:.3f} x the scheduled "
        f"learning rates, expected > {MOVED_AT_LEAST}"
    )


# ------------------------------------------------------------------------------------- loss falls


@cases
@pytest.mark.parametrize("stage", STAGES)
def test_training_loss_falls_from_the_first_epoch_to_the_last(lineages, method, precision, stage):
    """Measured last / first epoch mean loss (first / second stage, fp32 and bf16): full 0.18-0.21 /
    0.37-0.39, LoRA 0.29-0.34 / 0.47-0.50, AdaLoRA 0.20-0.23 / 0.41-0.44.

    The losses are high and noisy for runs this short (the second stage starts near 7-8): the probe-
    fitted head's weights are large (norm ~30, ~130 after the second stage's refit) while the encoder's
    dropout is on in training mode. (With AdaLoRA's earlier defaults, 5e-4 and alpha 16 on query and
    value, 32 steps left its loss flat, identical to the head-only run's.)
    """
    losses = lineages("readable", method, precision)[stage].epoch_losses
    assert len(losses) == READABLE_OPTIONS["epochs"]
    assert losses[-1] < LOSS_FALLS_TO * losses[0], (
        f"{method} {stage} ({precision}): the training loss did not fall below {LOSS_FALLS_TO} x the "
        f"first epoch's: {[round(loss, 4) for loss in losses]}"
    )


# --------------------------------------------------------------- a signal the head alone reads poorly


# Not run: its 24 runs would take ~40 s of this file's ~90 s for a known failure. Delete `run=False`
# (strict then reports an unexpected pass) once a learning rate or budget that learns it is chosen.
@pytest.mark.xfail(
    run=False,
    strict=True,
    raises=AssertionError,
    reason=(
        "at the stages' default learning rates the tiny random BERT does not learn an XOR in this "
        "file's budget (32 / 64 steps): trained AUC = head-only AUC to 0.01 in all 12 cases. With "
        "2,560 steps on 1,600 such notes, full (2e-5) and AdaLoRA (2e-3, alpha 192) stayed at the "
        "head-only 0.49; LoRA (1e-3, every linear layer) reached 0.89 after 640 steps, 1.0 after 960"
    ),
)
@cases
@pytest.mark.parametrize("stage", STAGES)
def test_encoder_learns_what_the_head_alone_cannot_read(lineages, method, precision, stage):
    runs = lineages("xor", method, precision)
    trained, head_only = runs[stage], runs[f"{stage}_head_only"]
    assert head_only.auc < HEAD_ONLY_NEAR_CHANCE, "the XOR must be hard to read for a head on frozen features"
    if stage == "second":
        parent_auc = trained.manifest["comparison"]["parent_vs_fine_tuned"]["parent"]["roc_auc"]
        assert parent_auc < HEAD_ONLY_NEAR_CHANCE, "the parent must not already know the second stage's XOR"
    assert trained.auc > head_only.auc + BEATS_HEAD_ONLY_AUC, (
        f"{method} {stage} ({precision}): trained AUC {trained.auc:.3f} vs head-only {head_only.auc:.3f}"
    )


# ------------------------------------------------------------------------------------------ bf16


@cases
@pytest.mark.parametrize("stage", STAGES)
def test_bf16_autocast_applies_inside_the_training_forward(lineages, method, precision, stage):
    """The dtype nn.Linear layers produced during training steps, not the manifest's label."""
    run = lineages("readable", method, precision)[stage]
    expected = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    assert run.training_dtypes == {expected}, (
        f"{method} {stage} ({precision}): training-step nn.Linear outputs were {run.training_dtypes}"
    )
    assert run.manifest["training_precision"] == ("bf16 autocast" if precision == "bf16" else "fp32")
