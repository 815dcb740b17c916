"""Typed entries of a run's results: one model per thing a stage reports.

Every stage builds these, results.json stores their JSON, and the CLI, the store and the pages read
them back through `core.results.read_results`, so a field is named once, here. Accuracies are
fractions in [0, 1], NLL is in nats per example, times are seconds, costs are per image.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Entry(BaseModel):
    """Base of every results model: unknown keys are refused, so a misspelt field fails on read."""

    model_config = ConfigDict(extra="forbid")


class TestScores(Entry):
    """Test-split scores of one model or combiner."""

    test_acc: float
    test_nll: float
    test_ece: float


class TrainedEntry(TestScores):
    """What every trained model (teacher draw or student) reports."""

    seed: int                                   # seed index within its member or method, 0, 1, ...
    val_acc: float | None = None                # at the best epoch (early-stopping criterion: val loss)
    val_nll: float | None = None
    train_seconds: float
    best_epoch: int
    history: list[dict[str, int | float]] = Field(default_factory=list)  # one {split/metric: value} per epoch
    weights: str                                # final weights, relative to the run folder


class TeacherEntry(TrainedEntry):
    """One teacher draw: a member of the config trained with one seed."""

    name: str                                   # the member's unique label (config order)
    model: str                                  # timm name
    params: int
    flops: int                                  # per image, 2 per multiply-add
    epochs_run: int
    weights_hash: str                           # SHA-256 prefix of the weights file (the logit cache key)

    @property
    def source(self) -> str:
        """The event source this draw trained under, e.g. `teacher/resnet18/s0`."""
        return f"teacher/{self.name}/s{self.seed}"


class DroppedTeacher(Entry):
    """A teacher draw left out of the ensemble (diverged), with why."""

    name: str
    seed: int
    error: str


StudentKind = Literal["scratch", "kd"]


class StudentEntry(TrainedEntry):
    """One student: `scratch` (hard labels) or `kd` (distilled; `round` 1.. with residual rounds)."""

    kind: StudentKind
    round: int | None = None                    # None for scratch
    # Distilled students (absent in results written before distill.teacher_budget): train examples with a
    # teacher target in this round, and teacher forward passes this round spent (see core.distill.budget).
    teacher_examples: int | None = None
    teacher_passes: int | None = None

    @property
    def label(self) -> str:
        """`scratch` or `kd` (one round) / `kd-round2`; the method it is a seed of."""
        return self.kind if self.kind == "scratch" else f"kd-r{self.round or 1}"

    @property
    def model_name(self) -> str:
        """How the model is named on the command line and in test_outputs, e.g. `student/kd/s1`."""
        return f"student/{'scratch' if self.kind == 'scratch' else 'kd'}/s{self.seed}"


class EnsembleEntry(Entry):
    """One combiner's ensemble on test, or the error that kept it from being fitted."""

    scheme: str
    error: str | None = None
    test_acc: float | None = None
    test_nll: float | None = None
    test_ece: float | None = None
    test_brier: float | None = None
    members: int | None = None                  # teacher draws combined
    global_weights: list[float] | None = None   # one per draw, for combiners that fit them
    mean_example_weights: list[float] | None = None  # per-example weights averaged over test
    info: dict[str, int | float | str | bool] = Field(default_factory=dict)  # fit details (val NLL, iterations)

    @property
    def fitted(self) -> bool:
        return self.error is None


class ViewsInfo(Entry):
    pad: int
    flip: bool
    stride: int
    views: int


class TeachingInfo(Entry):
    """Where the distilled students' targets came from (distill.teaching)."""

    mode: Literal["cached", "views", "live"]
    seconds: float = 0.0                        # spent preparing targets beyond the plain logit cache
    views: ViewsInfo | None = None
    teachers: int | None = None                 # live teaching: teachers run per batch

    def text(self) -> str:
        """A few words for tables: `50 cached views`, `live teachers`, `plain logit cache`."""
        if self.mode == "views" and self.views is not None:
            return f"{self.views.views} cached views"
        return "live teachers" if self.mode == "live" else "plain logit cache"


class BudgetRound(Entry):
    """One distillation round under `distill.teacher_budget`: teacher cost and what it bought."""

    round: int
    seeds: int                                  # distilled students (seeds) of this round
    examples: int                               # train examples with a teacher target, per student
    passes: int                                 # teacher forward passes this round, summed over the seeds
    passes_cumulative: int                      # rounds 1..round, summed over the seeds
    val_acc: float | None = None                # mean over seeds
    test_acc: float                             # mean over seeds
    gain_recovery: float | None = None          # of the means, against the scratch students and the target

    @property
    def passes_per_student(self) -> float:
        """Cumulative teacher passes of one student lineage (the mean over seeds)."""
        return self.passes_cumulative / max(self.seeds, 1)


class BudgetReport(Entry):
    """Teacher forward passes against student accuracy, round by round (core.distill.budget).

    counts: 'targets' (cached teaching: examples x views x teachers whose outputs are used as targets,
    each once) or 'forwards' (live teaching: teacher forwards run during training, every epoch).
    """

    share: float                                # distill.teacher_budget
    mode: Literal["cached", "views", "live"]
    counts: Literal["targets", "forwards"]
    views: int | None = None                    # teacher outputs per example and teacher (cached teaching)
    teachers: int
    train_examples: int
    per_round: int                              # examples each round spends
    rounds: list[BudgetRound] = Field(default_factory=list)

    @property
    def shown(self) -> bool:
        """Worth a chart: a budget below 1 or several rounds."""
        return self.share < 1.0 or len(self.rounds) > 1


class CacheCounts(Entry):
    hits: int
    misses: int


class DatasetInfo(Entry):
    """The data set a run used: name, split sizes (images) and shape."""

    name: str
    train: int
    val: int
    test: int
    num_classes: int
    in_chans: int
    image_size: int
    device: str
    streaming: bool
    flip: bool


class GainRecovery(Entry):
    """(kd - scratch) / (ensemble - scratch): of the means, and per seed (paired by seed) with its spread."""

    per_seed: list[float | None]
    mean: float | None
    std: float | None
    n: int
    of_means: float | None

    def text(self) -> str:
        """`0.52 of the means; per seed 0.51 +- 0.09 (n=3)`, or why it is undefined."""
        if self.of_means is None:
            return "undefined (the ensemble is not more accurate than the scratch student)"
        out = f"{self.of_means:.2f} of the means"
        if self.mean is not None:
            out += f"; per seed {self.mean:.2f} +- {self.std:.2f} (n={self.n})"
        return out


class ComparisonRow(Entry):
    """One row of the comparison table: a teacher, an ensemble scheme or a student method."""

    method: str                                 # e.g. resnet18, ensemble/mean_logit, student/kd
    kind: Literal["teacher", "ensemble", "student"]
    test_acc_mean: float
    test_acc_std: float
    test_nll_mean: float
    test_nll_std: float
    test_ece: float
    seeds: int
    params: int
    flops: int
    latency_ms: float                           # median batch-1 forward
    throughput: float                           # images/s at the benchmark batch
    peak_memory_mb: float
    train_seconds: float                        # including the teachers' for distilled students


class ComparisonSummary(Entry):
    """The distillation headline of a finished run."""

    target_scheme: str
    gain_recovery: GainRecovery
    student_params: int
    student_to_teacher_params: float            # over the mean teacher
    student_to_ensemble_params: float           # over every draw the ensemble runs


class DiagnosticsHeader(Entry):
    """The diagnostics section: its header is typed, the per-combiner detail is kept as computed.

    The detail (decompositions, growth, pairwise matrices, calibration bins) is drawn by the
    Diagnostics page's figures, which read it defensively; `error` is set when it could not be computed.
    """

    model_config = ConfigDict(extra="allow")

    error: str | None = None
    version: int | None = None
    members: list[str] = Field(default_factory=list)
    draws: int | None = None
    examples: int | None = None
    classes: int | None = None
    reason: str | None = None                   # why bias/variance are undefined, if they are
    combiners: dict[str, Any] = Field(default_factory=dict)

    @property
    def computed(self) -> bool:
        return self.error is None and bool(self.combiners)

    def detail(self) -> dict[str, Any]:
        """The whole section as plain data, for figures."""
        return self.model_dump()

    def decomposition_text(self) -> str:
        """One line: the cross-entropy decomposition of the logit-average ensemble on test."""
        if not self.computed or "mean_logit" not in self.combiners:
            return f"diagnostics: {self.error or 'not computed'}"
        t = self.combiners["mean_logit"]["terms"]
        text = (f"mean_logit test loss {t['loss']:.4f} = member loss {t['member_loss']:.4f} - diversity "
                f"{t['diversity']:.4f}")
        if t.get("bias") is not None:
            text += f" (bias {t['bias']:.4f} + variance {t['variance']:.4f})"
        return text
