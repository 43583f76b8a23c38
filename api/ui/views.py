"""What the pages show, shaped from the rows and reports the services return: model names,
a job's phase, the per-epoch chart and the forgetting check in words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.ui.i18n import N_
from core.db.models import Job, JobEvent, JobStatus, Model
from ml.baseline import better_of
from ml.vocabulary import BASE, BASELINE_PREFIX

# The job states as the pages word them (marked here for the catalogs).
STATUS_WORDS = (N_("queued"), N_("running"), N_("succeeded"), N_("failed"), N_("cancelled"))
FINISHED = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
# Metrics a clinician reads first, in this order, in every comparison table.
TABLE_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "f1", "accuracy", "brier")
METRIC_LABELS = {
    "roc_auc": N_("ROC AUC"),
    "pr_auc": N_("PR AUC"),
    "sensitivity": N_("Sensitivity"),
    "specificity": N_("Specificity"),
    "precision": N_("Precision"),
    "f1": N_("F1"),
    "accuracy": N_("Accuracy"),
    "brier": N_("Brier score (lower is better)"),
    "ece": N_("Calibration error (lower is better)"),
}
# A second fine-tune that loses more AUC than this on the first data has noticeably forgotten it.
FORGETTING_TOLERANCE = 0.02
CHART_SERIES = (("roc_auc", "#1f6feb"), ("f1", "#d9480f"))


def model_label(model: Model) -> str:
    return model.name or f"{model.method} · stage {model.stage} · {model.id[:8]}"


def model_labels(models: list[Model]) -> dict[str, str]:
    labels = {model.id: model_label(model) for model in models}
    labels[BASE] = "base (untrained)"
    labels.update({BASELINE_PREFIX + model.id: f"TF-IDF baseline · {model_label(model)}" for model in models})
    return labels


def job_phase(job: Job) -> str:
    """What the job is doing now, in words; the worker's own phase when it reports one."""
    progress = job.progress or {}
    if job.status == JobStatus.queued:
        return N_("waiting for a worker")
    if job.status != JobStatus.running:
        return str(job.status)
    if progress.get("phase"):
        return str(progress["phase"])
    if job.cancel_requested:
        return N_("stopping")
    if not progress:
        return N_("preparing: reading the data and fitting the head")
    return N_("training")


@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    value: float
    epoch: int


@dataclass(frozen=True)
class ChartLine:
    metric: str
    colour: str
    points: list[ChartPoint]

    @property
    def path(self) -> str:
        return " ".join(f"{point.x:.1f},{point.y:.1f}" for point in self.points)


@dataclass(frozen=True)
class EpochChart:
    """Per-epoch validation metrics, drawn as an inline SVG by the template (values 0..1)."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    epochs: int
    lines: list[ChartLine]


def epoch_chart(events: list[JobEvent], epochs: int | None) -> EpochChart | None:
    per_epoch = [event.data for event in events if event.kind == "epoch" and event.data.get("validation")]
    if not per_epoch:
        return None
    total = max(epochs or 1, max(int(item["epoch"]) for item in per_epoch))
    width, height, left, top, right, bottom = 420, 180, 40, 12, 100, 28
    plot_width, plot_height = width - left - right, height - top - bottom

    def x_of(epoch: int) -> float:
        return left + (plot_width * (epoch - 1) / (total - 1) if total > 1 else plot_width / 2)

    lines = []
    for metric, colour in CHART_SERIES:
        points = [
            ChartPoint(
                x_of(int(item["epoch"])),
                top + plot_height * (1 - float(item["validation"][metric])),
                float(item["validation"][metric]),
                int(item["epoch"]),
            )
            for item in per_epoch
            if isinstance(item["validation"].get(metric), int | float)
        ]
        lines.append(ChartLine(metric, colour, points))
    return EpochChart(width, height, left, top, plot_width, plot_height, total, lines)


@dataclass(frozen=True)
class DialPoint:
    weight: float
    new_site: float | None
    parent_site: float | None
    chosen: bool


@dataclass(frozen=True)
class DialView:
    """The forgetting dial (weight interpolation) as the page shows it: a table and an SVG curve."""

    weight: float
    points: list[DialPoint]
    head_only_kept: bool
    width: int = 360
    height: int = 170
    left: int = 44
    top: int = 10
    plot_width: int = 220
    plot_height: int = 130
    low: float = 0.0
    high: float = 1.0

    def x(self, weight: float) -> float:
        return self.left + self.plot_width * weight

    def y(self, value: float) -> float:
        return self.top + self.plot_height * (self.high - value) / max(self.high - self.low, 1e-9)

    def path(self, site: str) -> str:
        values = [(p.weight, getattr(p, site)) for p in self.points if getattr(p, site) is not None]
        return " ".join(f"{self.x(w):.1f},{self.y(v):.1f}" for w, v in values)

    @property
    def ticks(self) -> list[float]:
        return [self.low + (self.high - self.low) * k / 4 for k in range(5)]


def dial_view(record: dict[str, Any] | None) -> DialView | None:
    """None when the run did not interpolate (setting off, or a model from before the dial)."""
    curve = (record or {}).get("curve")
    if not curve:
        return None
    points = [
        DialPoint(
            float(p["weight"]),
            _number(p.get("new_site_roc_auc")),
            _number(p.get("parent_site_roc_auc")),
            float(p["weight"]) == float(record["weight"]),
        )
        for p in curve
    ]
    values = [v for p in points for v in (p.new_site, p.parent_site) if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    margin = max((high - low) * 0.1, 0.005)
    weight = float(record["weight"])
    return DialView(weight, points, weight == 0.0, low=max(low - margin, 0.0), high=min(high + margin, 1.0))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value == value else None


def comparison_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """(metric, a, b, b - a) for two metric sets of the same notes."""
    return [
        {"metric": name, "a": a.get(name), "b": b.get(name), "difference": _minus(b.get(name), a.get(name))}
        for name in TABLE_METRICS
        if name in a or name in b
    ]


@dataclass(frozen=True)
class ForgettingSummary:
    rows: int
    auc_difference: float
    ci: tuple[float, float] | None
    p_value: float | None
    sensitivity_difference: float | None
    specificity_difference: float | None
    forgot: bool


def forgetting_summary(check: dict[str, Any] | None) -> ForgettingSummary | None:
    """The forgetting check (second - parent on the parent's validation notes) as the page words it."""
    if not check:
        return None
    auc = check.get("differences", {}).get("roc_auc") or {}
    difference = auc.get("difference")
    if difference is None:
        return None
    ci = auc.get("ci")
    differences = check.get("differences", {})
    return ForgettingSummary(
        rows=int(check.get("rows") or check.get("parent", {}).get("n") or 0),
        auc_difference=float(difference),
        ci=(float(ci[0]), float(ci[1])) if ci and None not in ci else None,
        p_value=(check.get("roc_auc_test") or {}).get("p_value"),
        sensitivity_difference=(differences.get("sensitivity") or {}).get("difference"),
        specificity_difference=(differences.get("specificity") or {}).get("difference"),
        forgot=float(difference) < -FORGETTING_TOLERANCE,
    )


@dataclass(frozen=True)
class BaselineVerdict:
    better: str  # "fine_tuned", "baseline" or "level" (ml.baseline.better_of)
    fine_tuned_auc: float
    baseline_auc: float


def baseline_verdict(comparison: dict[str, Any]) -> BaselineVerdict | None:
    """The fine-tuned model against its TF-IDF baseline on validation ROC AUC, for the page to word."""
    tuned = (comparison.get("fine_tuned") or {}).get("roc_auc")
    baseline = (comparison.get("baseline") or {}).get("roc_auc")
    better = better_of(tuned, baseline)
    return None if better is None else BaselineVerdict(better, float(tuned), float(baseline))


def _minus(b: Any, a: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(b) - float(a)
    return None


@dataclass(frozen=True)
class Segment:
    """A piece of the note as the predict page shows it: a sentence with its share, or the text between."""

    text: str
    contribution: float | None  # None between sentences
    tone: str  # "raised", "lowered" or "" (no sentence, or a share too small to mark)


def highlighted(note: str, explanation: dict[str, Any]) -> list[Segment]:
    """The note cut at the explained sentences' offsets; each sentence marked by the way it moved the
    risk. A share under 10% of the largest one is left unmarked, so the eye goes to what mattered."""
    sentences = sorted(explanation.get("sentences") or [], key=lambda item: item["start"])
    largest = max((abs(item["contribution"]) for item in sentences), default=0.0)
    segments, position = [], 0
    for item in sentences:
        start, end = int(item["start"]), int(item["end"])
        if start < position or end > len(note):
            continue
        if start > position:
            segments.append(Segment(note[position:start], None, ""))
        share = float(item["contribution"])
        tone = "" if abs(share) < 0.1 * largest else ("raised" if share > 0 else "lowered")
        segments.append(Segment(note[start:end], share, tone))
        position = end
    if position < len(note):
        segments.append(Segment(note[position:], None, ""))
    return segments
