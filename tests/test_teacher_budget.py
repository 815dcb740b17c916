"""distill.teacher_budget: the stratified round-1 draw, residual-driven later rounds, exact teacher-pass
counts per teaching mode, the masked distillation loss, the per-round report, and budget 1 unchanged."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core import config
from core.cache import CacheStats
from core.data import ViewGrid
from core.device import precision_for
from core.distill import kd_loss
from core.distill.budget import (BUDGET_SEED_OFFSET, PASSES_KEY, TeacherBudget, budget_size, residuals,
                                 stratified_draw, worst_fitted)
from core.errors import ConfigError
from core.pipeline import prepare, run_experiment
from core.prepare import config_fingerprint
from core.report import format_budget_table
from core.results import StudentEntry, read_results
from core.stages import budget_report, ensemble_stage, teacher_stage, teaching_stage
from core.students import Teaching, residual_weights, train_student
from core.train import CancelToken, EventBus, predict_logits

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
        "teachers=[{model: test_resnet}, {model: test_efficientnet}]", "student.model=test_byobnet",
        "student.width=null", "student.seeds=1", "distill.teaching=cached"]


def tiny(*extra: str) -> config.RunConfig:
    return config.load(overrides=TINY + list(extra))


# ---- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "abc", "[0.5]"])
def test_a_bad_budget_is_one_line_naming_the_field(value):
    with pytest.raises(ConfigError) as info:
        tiny(f"distill.teacher_budget={value}")
    message = str(info.value)
    assert message.startswith("distill.teacher_budget") and "\n" not in message


def test_the_budget_defaults_to_every_example():
    assert tiny().distill.teacher_budget == 1.0
    assert tiny("distill.teacher_budget=0.25").distill.teacher_budget == 0.25


def test_the_setup_page_offers_the_budget_with_its_limits():
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "setup.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    budget = at.number_input(key="cfg.distill.teacher_budget")  # under "More ensemble and distillation settings"
    assert budget.value == 1.0 and budget.min > 0 and budget.max == 1.0  # gt=0, le=1
    assert budget.help == config.DistillConfig.model_fields["teacher_budget"].description
    budget.set_value(0.25).run()
    assert at.session_state["raw"]["distill"]["teacher_budget"] == 0.25


# ---- selection -----------------------------------------------------------------------------------

@pytest.mark.parametrize("share", [0.05, 0.25, 0.3, 0.5, 0.9])
def test_round_one_is_a_stratified_seeded_draw(share):
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 17 + [3] * 3)  # uneven classes, 100 examples
    mask = stratified_draw(labels, share, seed=7)
    assert mask.dtype == torch.bool and int(mask.sum()) == budget_size(100, share) == max(1, round(share * 100))
    drawn = Counter(labels[mask].tolist())
    for c, n_c in Counter(labels.tolist()).items():
        assert abs(drawn.get(c, 0) - share * n_c) < 1, (c, drawn)  # within one example of its share
    assert torch.equal(stratified_draw(labels, share, seed=7), mask)  # seeded: deterministic
    others = [stratified_draw(labels, share, seed=s) for s in range(8, 12)]
    assert any(not torch.equal(o, mask) for o in others)             # another seed, another draw
    assert all(Counter(labels[o].tolist()) == drawn for o in others)  # with the same class counts


def test_the_round_one_draw_is_seeded_from_the_run_seed():
    labels = torch.arange(200) % 4
    teaching = Teaching("cached", members=2)
    a = teaching.budget(tiny("distill.teacher_budget=0.25", "seed=3"), labels)
    b = teaching.budget(tiny("distill.teacher_budget=0.25", "seed=3"), labels)
    c = teaching.budget(tiny("distill.teacher_budget=0.25", "seed=4"), labels)
    assert torch.equal(a.queried, b.queried) and not torch.equal(a.queried, c.queried)
    assert torch.equal(a.queried, stratified_draw(labels, 0.25, 3 + BUDGET_SEED_OFFSET))
    full = teaching.budget(tiny(), labels)
    assert full.mask is None and full.examples == 200  # share 1: every example, the unbudgeted path


def test_worst_fitted_takes_the_largest_residuals_outside_the_queried_set():
    residual = torch.tensor([0.1, 5.0, 0.3, 2.0, 2.0, 0.0, 9.0, 1.0])
    queried = torch.tensor([False, False, False, False, False, False, True, False])
    picked = worst_fitted(residual, queried, 3)
    # 6 is already queried; then 1 (5.0) and the tie 3, 4 (2.0): both fit in k = 3
    assert picked.nonzero().squeeze(1).tolist() == [1, 3, 4]
    assert worst_fitted(residual, queried, 2).nonzero().squeeze(1).tolist() == [1, 3]  # tie: the lower row
    assert int(worst_fitted(residual, ~queried | queried, 3).sum()) == 0                # nothing left
    assert int(worst_fitted(residual, queried, 50).sum()) == 7                          # fewer than k left


def test_later_rounds_query_the_examples_the_student_fits_worst():
    n, k = 12, 3
    labels = torch.arange(n) % 3
    budget = TeacherBudget.first_round(labels, 0.25, seed=0, per_example=2)
    first = budget.queried.clone()
    assert budget.examples == budget.new == 3 and budget.round_passes() == 6
    # A student that fits every example (confidently right) except three it gets wrong, with growing
    # confidence, among those not queried yet; and one it gets very wrong among the queried ones.
    logits = 6.0 * F.one_hot(labels, k).float()
    outside = (~first).nonzero().squeeze(1).tolist()
    wrong = {outside[0]: 2.0, outside[3]: 4.0, outside[5]: 8.0}
    for row, confidence in wrong.items():
        logits[row] = confidence * F.one_hot((labels[row] + 1) % k, k).float()
    logits[first.nonzero()[0, 0]] = 20.0 * F.one_hot((labels[first.nonzero()[0, 0]] + 1) % k, k).float()
    teacher = torch.full((n, k), 1.0 / k)  # only its queried rows may be read
    added = budget.next_round(teacher, logits)
    assert added == 3 and budget.round == 2 and budget.examples == 6
    assert set((budget.queried & ~first).nonzero().squeeze(1).tolist()) == set(wrong)  # the worst-fitted
    assert torch.equal(budget.queried & first, first)                               # kept what it had
    known = budget.known_target(teacher)
    assert torch.equal(known[budget.queried], teacher[budget.queried])
    assert torch.equal(known[~budget.queried], F.one_hot(labels[~budget.queried], k).float())
    # The selection residual is the re-weighting's: against the label where no teacher target was bought.
    assert torch.allclose(residuals(F.one_hot(labels, k).float(), logits),
                          F.cross_entropy(logits, labels, reduction="none"), atol=1e-5)


# ---- counting ------------------------------------------------------------------------------------

def test_cached_teacher_passes_are_examples_times_views_times_teachers():
    labels = torch.arange(240) % 4  # 240 train examples, 60 per class
    grid = ViewGrid(pad=2, flip=True)
    assert grid.num_views == 50  # 5 x 5 shifts x flip
    cfg = tiny("distill.teacher_budget=0.25", "distill.rounds=2")
    for teaching, views in ((Teaching("views", views=grid, members=2), 50), (Teaching("cached", members=2), 1)):
        budget = teaching.budget(cfg, labels)
        assert budget.new == 60 and budget.round_passes() == 60 * views * 2  # 6000 views, 120 cached
        logits = torch.randn(240, 4, generator=torch.Generator().manual_seed(0))
        budget.next_round(torch.full((240, 4), 0.25), logits)
        assert budget.new == 60 and budget.examples == 120 and budget.round_passes() == 60 * views * 2
        entries = [StudentEntry(kind="kd", round=r, seed=0, test_acc=0.5, test_nll=1.0, test_ece=0.1,
                                train_seconds=1.0, best_epoch=1, weights="w", teacher_examples=e,
                                teacher_passes=60 * views * 2) for r, e in ((1, 60), (2, 120))]
        scratch = StudentEntry(kind="scratch", seed=0, test_acc=0.4, test_nll=1.0, test_ece=0.1,
                               train_seconds=1.0, best_epoch=1, weights="w")
        report = budget_report(teaching, 0.25, 2, 240, [scratch, *entries], ensemble_acc=0.6)
        assert report.views == views and report.counts == "targets" and report.per_round == 60
        assert [(r.passes, r.passes_cumulative, r.examples) for r in report.rounds] == \
            [(60 * views * 2, 60 * views * 2, 60), (60 * views * 2, 2 * 60 * views * 2, 120)]
        assert report.rounds[1].gain_recovery == pytest.approx((0.5 - 0.4) / (0.6 - 0.4))
        # Round 3 at budget 0.25 would query 60 more, round 5 nothing: every example is queried by then.
        budget.next_round(torch.full((240, 4), 0.25), logits)
        budget.next_round(torch.full((240, 4), 0.25), logits)
        assert budget.examples == 240 and budget.mask is None
        assert budget.next_round(torch.full((240, 4), 0.25), logits) == 0 and budget.round_passes() == 0


def test_live_teachers_run_only_on_queried_examples_and_are_counted_as_they_run(tmp_path):
    """Live: 164 train examples, batches of 41 (none dropped), 2 epochs, 2 teachers, budget 0.5."""
    cfg = tiny("distill.teaching=live", "distill.teacher_budget=0.5", "distill.rounds=2", "train.batch_size=41")
    results = run_experiment(prepare(cfg, tmp_path), tmp_path)
    n = results.dataset.train
    assert n == 164 and n % 41 == 0
    kd = results.kd(1) + results.kd(2)
    assert [s.teacher_examples for s in kd] == [82, 164]
    # round 1: 82 queried examples x 2 epochs x 2 teachers; round 2: all 164 (82 kept + 82 new)
    assert [s.teacher_passes for s in kd] == [82 * 2 * 2, 164 * 2 * 2] == [328, 656]
    assert [h[PASSES_KEY] for h in kd[0].history] == [164, 164]  # per epoch, in the history checkpoints keep
    report = results.teacher_budget
    assert report.counts == "forwards" and report.views is None
    assert [r.passes_cumulative for r in report.rounds] == [328, 984]


def test_a_sweep_trial_without_a_budget_gets_the_round_one_draw(shapes_bundle, tmp_path):
    """train_student gives a 'kd' student round 1's draw by itself (a sweep's trials train one round)."""
    cfg = tiny("distill.teacher_budget=0.25", "train.epochs=1")
    n = len(shapes_bundle.train)
    target = torch.full((n, shapes_bundle.num_classes), 1.0 / shapes_bundle.num_classes)
    teaching = Teaching("cached", target=target, members=3)
    run = train_student(cfg, shapes_bundle, "kd", 0, tmp_path, EventBus(), CancelToken(), teaching)
    assert run.entry.teacher_examples == budget_size(n, 0.25)
    assert run.entry.teacher_passes == budget_size(n, 0.25) * 3


# ---- the loss ------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["hinton", "dkd", "dist"])
def test_examples_without_a_target_get_only_the_hard_label_loss(loss):
    g = torch.Generator().manual_seed(0)
    zs = (torch.randn(6, 5, generator=g) * 2).requires_grad_()
    y = torch.randint(0, 5, (6,), generator=g)
    teacher = (torch.randn(6, 5, generator=g) * 3).softmax(-1)
    mask = torch.tensor([True, False, True, False, False, True])
    T, alpha = 2.0, 0.7
    out = kd_loss(loss, zs, teacher[mask], y, T, alpha, mask=mask)
    out["loss"].backward()
    # Rows without a target: the gradient of (1 - alpha) * mean CE alone, (1 - alpha) / B (softmax - onehot).
    ce_grad = (1 - alpha) / 6 * (zs.detach().softmax(-1) - F.one_hot(y, 5).float())
    assert torch.allclose(zs.grad[~mask], ce_grad[~mask], atol=1e-6)
    assert not torch.allclose(zs.grad[mask], ce_grad[mask], atol=1e-4)  # the others also learn the target
    assert out["ce"].item() == pytest.approx(F.cross_entropy(zs.detach(), y).item(), rel=1e-6)  # CE stays whole
    # Every row queried: the same loss as without a mask.
    full = kd_loss(loss, zs.detach(), teacher, y, T, alpha)
    assert kd_loss(loss, zs.detach(), teacher, y, T, alpha, mask=torch.ones(6, dtype=torch.bool))["loss"].item() \
        == pytest.approx(full["loss"].item(), rel=1e-6)


def test_the_masked_kd_term_is_the_per_example_mean_over_the_whole_batch():
    g = torch.Generator().manual_seed(1)
    zs, y = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    teacher = torch.randn(8, 4, generator=g).softmax(-1)
    w = torch.rand(8, generator=g) + 0.5
    mask = torch.tensor([True, True, False, False, True, False, False, False])
    T = 3.0
    teacher_T = (teacher.log() / T).softmax(-1)  # the target at temperature T
    per = (teacher_T * (teacher_T.log() - (zs / T).log_softmax(-1))).sum(-1)
    out = kd_loss("hinton", zs, teacher[mask], y, T, 0.5, weights=w, mask=mask)
    assert out["kd"].item() == pytest.approx((T * T * (w * per * mask).sum() / w.sum()).item(), rel=1e-5)
    # A batch without a queried row: no KD term, and alpha = 1 still back-propagates (a zero gradient).
    none = torch.zeros(8, dtype=torch.bool)
    z = zs.clone().requires_grad_()
    empty = kd_loss("hinton", z, torch.empty(0, 0), y, T, 1.0, mask=none)
    empty["loss"].backward()
    assert empty["kd"].item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


# ---- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget")
    cfg = tiny("distill.teacher_budget=0.5", "distill.rounds=2")
    return out, cfg, run_experiment(prepare(cfg, out), out)


def test_a_budgeted_run_reports_teacher_cost_and_accuracy_per_round(budget_run):
    out, cfg, results = budget_run
    n = results.dataset.train
    k = budget_size(n, 0.5)
    assert (n, k) == (164, 82)
    kd = [s for s in results.students if s.kind == "kd"]
    assert [(s.round, s.teacher_examples, s.teacher_passes) for s in kd] == \
        [(1, 82, 82 * 1 * 2), (2, 164, 82 * 1 * 2)]  # cached: examples x 1 view x 2 teachers, each once
    report = results.teacher_budget
    assert (report.share, report.mode, report.counts, report.views, report.teachers) == (0.5, "cached", "targets", 1, 2)
    assert (report.train_examples, report.per_round) == (164, 82) and report.shown
    assert [(r.round, r.examples, r.passes, r.passes_cumulative) for r in report.rounds] == \
        [(1, 82, 164, 164), (2, 164, 164, 328)]
    for r in report.rounds:
        assert r.test_acc == pytest.approx(results.kd(r.round)[0].test_acc)
        assert r.val_acc == pytest.approx(results.kd(r.round)[0].val_acc)
    # What is written reads back the same, and older files (without the new fields) still read.
    assert read_results(out / "results.json") == results
    old = json.loads((out / "results.json").read_text())
    old.pop("teacher_budget")
    for s in old["students"]:
        s.pop("teacher_examples"), s.pop("teacher_passes")
    assert read_results(old).teacher_budget is None
    table = format_budget_table(report)
    assert "82 of 164 train examples per round" in table and "328" in table


def test_the_budget_curve_is_drawn_on_the_tradeoff_page(budget_run):
    from streamlit.testing.v1 import AppTest

    from dashboard import figures
    from dashboard.state import run_store
    out, cfg, results = budget_run
    fig = figures.budget_curve(results.teacher_budget.model_dump(), scratch_acc=0.4, ensemble_acc=0.9)
    kd = next(t for t in fig.data if t.name == "KD student, test")
    assert list(kd.x) == [164, 328] and list(kd.text) == ["r1", "r2"]
    assert any(t.name.startswith("scratch") and list(t.x) == [0] for t in fig.data)
    assert figures.is_empty(figures.budget_curve({"rounds": []}))
    with pytest.raises(ValueError, match="teacher_budget"):
        figures.budget_curve({"share": 0.5})
    store = run_store()
    run_id = store.create_run(cfg.to_dict(), name="budget", run_dir=out)
    store.finish_run(run_id, "done", results=results.to_json())
    at = AppTest.from_file(str(ROOT / "dashboard" / "views" / "tradeoff.py"), default_timeout=60)
    at.session_state["selected_run"] = run_id
    at.run()
    assert not at.exception, at.exception
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(specs) == 3  # latency, params, and the teacher cost per round
    assert any(h.value == "Teacher cost across rounds" for h in at.subheader)


def test_budget_one_trains_exactly_as_before_the_budget(tmp_path):
    """Budget 1 (the default) against the rounds loop as it was written before the budget existed."""
    cfg = tiny("distill.rounds=2")
    results = run_experiment(prepare(cfg, tmp_path / "run"), tmp_path / "run")
    report = results.teacher_budget
    assert report.share == 1.0 and report.shown  # two rounds: worth the chart
    assert [(r.examples, r.passes) for r in report.rounds] == [(164, 164 * 2), (164, 0)]  # round 2 buys nothing
    # The pre-budget loop, on the same (resumed) teachers and target, into another folder.
    prep = prepare(cfg, tmp_path / "run")
    events, cancel = EventBus(), CancelToken()
    stats = CacheStats()
    trained = teacher_stage(prep, tmp_path / "run", events, cancel, stats, lambda message: None)
    _, combined = ensemble_stage(prep, trained.stack(), events, schemes=["mean_logit"])
    target = combined["mean_logit"]
    teaching = teaching_stage(prep, target, trained.draws, tmp_path / "run", stats)
    fingerprint = config_fingerprint(cfg.student.model_dump(), cfg.data.model_dump(), cfg.train.model_dump(),
                                     cfg.distill.model_dump(exclude={"teacher_budget"}), cfg.ensemble.model_dump(),
                                     [m.cfg.model_dump() for m in prep.members], cfg.seed)
    before = tmp_path / "before"
    entries = [train_student(cfg, prep.data, "scratch", 0, before, events, cancel, teaching,
                             fingerprint=fingerprint).entry]
    weights = None
    for r in (1, 2):
        kd = train_student(cfg, prep.data, "kd", 0, before, events, cancel, teaching, weights=weights,
                           round_index=r, fingerprint=fingerprint)
        entries.append(kd.entry)
        logits, _ = predict_logits(kd.model, prep.data.batches("train", 1024, shuffle=False, augment=False),
                                   prep.device, precision_for(prep.device))
        weights = residual_weights(target.probs["train"], logits)

    def numbers(entry: StudentEntry) -> dict:
        # The pre-budget loop knows no budget: its entries' teacher counts are not comparable.
        return entry.model_dump(exclude={"train_seconds", "weights", "history", "teacher_examples",
                                         "teacher_passes"}) | {
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in entry.history]}

    assert [numbers(e) for e in results.students] == [numbers(e) for e in entries]


def test_a_folder_written_before_the_budget_field_still_holds_the_same_run(tmp_path):
    # config.yaml of a run from before distill.teacher_budget existed: the same config, less the field.
    import yaml

    from core.prepare import check_output_dir

    cfg = config.load(overrides=["data.name=shapes", "data.count=240"])
    old = cfg.to_dict()
    del old["distill"]["teacher_budget"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_output_dir(tmp_path, cfg)  # accepted: the same run
    assert cfg.identity() == config.validate(old).identity() and "teacher_budget" not in cfg.identity()["distill"]
    budgeted = config.load(overrides=["data.name=shapes", "data.count=240", "distill.teacher_budget=0.5"])
    assert budgeted.identity()["distill"]["teacher_budget"] == 0.5
    with pytest.raises(Exception, match="already holds a run with a different config"):
        check_output_dir(tmp_path, budgeted)


def test_checkpoint_fingerprints_leave_out_fields_added_since_at_their_default():
    from core.config import ADDED_LATER, section_identity

    cfg = config.load(overrides=["data.name=shapes"])
    for path in ADDED_LATER:
        section, name = path.split(".")
        dumped = getattr(cfg, section).model_dump()
        assert name in dumped and name not in section_identity(getattr(cfg, section), section)
        assert section_identity(getattr(cfg, section), section) == {k: v for k, v in dumped.items() if k != name}
    budgeted = config.load(overrides=["data.name=shapes", "distill.teacher_budget=0.5", "data.train_fraction=0.5"])
    assert section_identity(budgeted.distill, "distill")["teacher_budget"] == 0.5
    assert section_identity(budgeted.data, "data")["train_fraction"] == 0.5
