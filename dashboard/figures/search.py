"""A search's figures: Optuna's own plots of the study, restyled like the dashboard's, and one of kdlab's.

    search_history(study, states, picked)     best-so-far val accuracy per trial, trials coloured by state
    search_parallel(study)                    parallel coordinates of the finished trials
    search_importance(study)                  fANOVA hyperparameter importance (>= 2 finished trials)
    search_pareto(study, objectives, picked)  val accuracy against latency (or params), two objectives
    search_scatter(rows, best)                val accuracy against latency of the finished trials, one objective

`study` is an `optuna.Study` (loaded by the page); Optuna is imported inside the functions, so
`dashboard.figures` stays light for pages without a search. Val accuracy is what every figure
ranks by; test accuracy appears only in hover text, beside it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import sample_colorscale

from dashboard.figures.base import FULL_WIDTH_CHARS, KIND_COLOURS, empty_figure, set_title

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# One colour per trial state on every search figure (kdlab's names, core.search.study.trial_state_name).
STATE_COLOURS = {"finished": KIND_COLOURS["student kd"], "pruned": "#ff7f0e", "failed": "#d62728",
                 "cancelled": "#7f7f7f", "interrupted": "#7f7f7f", "running": KIND_COLOURS["teacher"],
                 "waiting": "#bcbd22", "repeat": "#c7c7c7"}
PICK_MARKER = dict(symbol="star", size=18, color="#ffbf00", line=dict(color="black", width=1))
LINE_SCALE = "Viridis"  # parallel coordinates: dark = low val accuracy, yellow = high, visible on white
COST_LABELS = {"latency_ms": "student latency (ms, batch 1)", "params": "student parameters"}
VAL = "val accuracy"
MIN_IMPORTANCE_TRIALS = 2  # fANOVA fits a forest on the finished trials: one trial says nothing


def _restyle(fig: go.Figure, title: str, note: str | None = None, height: int = 420) -> go.Figure:
    """Optuna's figure in the dashboard's look: the default template, a wrapped title, a legend on top."""
    fig.update_layout(template=pio.templates.default, height=height, plot_bgcolor=None,
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1.0, xanchor="right"),
                      margin=dict(l=10, r=10, b=10))
    return set_title(fig, title, chars=FULL_WIDTH_CHARS // 2, note=note)


def _val_target(index: int):
    """The val accuracy of a finished trial (objective `index` of the study)."""
    return lambda t: t.values[index]


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def search_history(study: optuna.Study, states: Mapping[int, str] | None = None, picked: int | None = None,
                   val_index: int = 0) -> go.Figure:
    """Optuna's optimisation history of val accuracy, with the best so far, pruned and failed trials and the pick.

    states: trial number -> kdlab state (sweep.json's trials: 'cancelled' for a stopped trial, which
    Optuna records as failed); picked: the picked trial's number, starred.
    """
    from optuna.visualization import plot_optimization_history
    finished = sorted(_finished(study), key=lambda t: t.number)
    if not finished:
        return empty_figure("no finished trial yet: val accuracy per trial appears after the first")
    fig = plot_optimization_history(study, target=_val_target(val_index), target_name=VAL)
    for trace in fig.data:  # Optuna's markers of the finished trials; the infeasible trace stays hidden
        if trace.name == VAL:
            trace.update(name="finished", marker=dict(color=STATE_COLOURS["finished"], size=8),
                         hovertemplate="trial %{x}<br>val %{y:.4f}<extra>finished</extra>")
        else:
            trace.update(showlegend=False)
    values = [t.values[val_index] for t in finished]
    fig.add_trace(go.Scatter(x=[t.number for t in finished], y=list(np.maximum.accumulate(values)),
                             mode="lines", line=dict(color=STATE_COLOURS["finished"], shape="hv", width=2),
                             name="best so far", hoverinfo="skip"))
    _add_unfinished(fig, study, states or {}, floor=min(values))
    by_number = {t.number: t for t in finished}
    if picked in by_number:
        fig.add_trace(go.Scatter(x=[picked], y=[by_number[picked].values[val_index]], mode="markers",
                                 name="picked", marker=PICK_MARKER, hoverinfo="skip"))
    few = len(study.get_trials(deepcopy=False)) <= 20
    fig.update_xaxes(title="trial", dtick=1 if few else None)  # trial numbers are whole: no tick at 0.5
    fig.update_yaxes(title=VAL)
    return _restyle(fig, "Val accuracy per trial, best so far", note="pruned trials at their last reported epoch, "
                    "failed ones on the floor of the chart")


def _add_unfinished(fig: go.Figure, study: optuna.Study, states: Mapping[int, str], floor: float) -> None:
    """Markers of the pruned (at their last reported val accuracy) and failed or stopped trials."""
    from optuna.trial import TrialState
    groups: dict[str, tuple[list[int], list[float]]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED, TrialState.FAIL)):
        state = states.get(t.number, "pruned" if t.state == TrialState.PRUNED else "failed")
        steps = t.intermediate_values
        xs, ys = groups.setdefault(state, ([], []))
        xs.append(t.number)
        ys.append(steps[max(steps)] if steps else floor)
    for state, (xs, ys) in groups.items():
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=state,
                                 marker=dict(color=STATE_COLOURS.get(state, "#7f7f7f"), size=9, symbol="x"),
                                 hovertemplate="trial %{x}<br>last val %{y:.4f}<extra>" + state + "</extra>"))


def search_parallel(study: optuna.Study, val_index: int = 0) -> go.Figure:
    """Optuna's parallel coordinates of the finished trials: val accuracy, then every searched field."""
    from optuna.visualization import plot_parallel_coordinate
    if not _finished(study):
        return empty_figure("no finished trial yet: the parallel coordinates appear after the first")
    fig = plot_parallel_coordinate(study, target=_val_target(val_index), target_name=VAL)
    for trace in fig.data:
        # Optuna draws one line per trial, its first point the trial's val accuracy scaled to [0, 1];
        # recoloured on a scale whose low end is not white on white.
        if trace.mode == "lines" and trace.y:
            trace.line.color = sample_colorscale(LINE_SCALE, [min(max(float(trace.y[0]), 0.0), 1.0)])[0]
            trace.opacity = 0.8
        elif trace.marker is not None and trace.marker.colorscale is not None:
            trace.marker.update(colorscale=LINE_SCALE, reversescale=False)
    return _restyle(fig, "Parallel coordinates of the finished trials", note="one line per trial, coloured by "
                    "its val accuracy")


def search_importance(study: optuna.Study, val_index: int = 0) -> go.Figure:
    """Optuna's hyperparameter importance of val accuracy (fANOVA, seed 0), or why there is none yet."""
    import optuna
    from optuna.visualization import plot_param_importances
    values = {t.values[val_index] for t in _finished(study)}
    done = len(_finished(study))
    if done < MIN_IMPORTANCE_TRIALS:
        return empty_figure(f"hyperparameter importance needs at least {MIN_IMPORTANCE_TRIALS} finished trials "
                            f"({done} so far)")
    if len(values) == 1:  # fANOVA has no variance to share out (Optuna raises)
        return empty_figure(f"all {done} finished trials have the same val accuracy ({values.pop():.4f}): no setting "
                            "explains a difference yet")
    try:
        fig = plot_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                                     target=_val_target(val_index), target_name=VAL)
    except (ValueError, RuntimeError) as err:  # e.g. a space Optuna cannot fit a forest on
        log.warning("study %s: no hyperparameter importance (%s: %s)", study.study_name, type(err).__name__, err)
        return empty_figure(f"no hyperparameter importance for these trials: {err}")
    for trace in fig.data:
        trace.update(marker=dict(color=KIND_COLOURS["student kd"]), texttemplate="%{x:.2f}", name=VAL)
    fig.update_xaxes(title="share of the val accuracy's variance (fANOVA)")
    fig.update_yaxes(title=None)
    return _restyle(fig, "Which settings matter for val accuracy", height=300)


def search_pareto(study: optuna.Study, objectives: Sequence[str], picked: int | None = None) -> go.Figure:
    """Optuna's Pareto front, the cost on x and val accuracy on y; the front green, the rest grey, the pick starred."""
    from optuna.visualization import plot_pareto_front
    if len(objectives) != 2 or "val_acc" not in objectives:
        raise ValueError(f"a Pareto front needs val_acc and one cost objective, got {list(objectives)}")
    if not _finished(study):
        return empty_figure("no finished trial yet: the Pareto front appears after the first")
    val, cost = objectives.index("val_acc"), 1 - objectives.index("val_acc")
    label = COST_LABELS.get(objectives[cost], objectives[cost])
    # targets only reorders what is drawn: Optuna finds the front with the study's own directions.
    fig = plot_pareto_front(study, target_names=[label, VAL], targets=lambda t: (t.values[cost], t.values[val]))
    for trace in fig.data:
        best = "Best" in str(trace.hovertemplate)
        trace.update(name="Pareto front" if best else "dominated", showlegend=True,
                     marker=dict(color=STATE_COLOURS["finished"] if best else KIND_COLOURS["student scratch"],
                                 size=10 if best else 8, colorscale=None, showscale=False, colorbar=None))
    if picked is not None:
        trial = next((t for t in _finished(study) if t.number == picked), None)
        if trial is not None:
            fig.add_trace(go.Scatter(x=[trial.values[cost]], y=[trial.values[val]], mode="markers", name="picked",
                                     marker=PICK_MARKER, hovertext=[f"trial {picked}"], hoverinfo="text"))
    fig.update_xaxes(title=label)
    fig.update_yaxes(title=VAL)
    return _restyle(fig, f"Pareto front: val accuracy against {label}", note="no other trial is both more accurate "
                    "and cheaper than a trial on the front")


def search_scatter(rows: Sequence[Mapping[str, Any]], best: int | None = None, cost: str = "latency_ms") -> go.Figure:
    """Val accuracy (mean +- std over seeds) against the student's cost for the finished trials (sweep.json rows).

    The cost is not searched here (one objective): it shows what the val-best trial costs to run.
    """
    column = {"latency_ms": "latency_ms", "params": "student_params"}[cost]
    shown = [(i, r) for i, r in enumerate(rows) if r.get(column) is not None and r.get("kd_val_acc") is not None]
    if not shown:
        return empty_figure(f"no finished trial with a measured {cost} yet")
    label = COST_LABELS[cost]
    fig = go.Figure(go.Scatter(
        x=[r[column] for _, r in shown], y=[r["kd_val_acc"] for _, r in shown], mode="markers", name="finished",
        marker=dict(color=STATE_COLOURS["finished"], size=9),
        error_y=dict(type="data", array=[r.get("kd_val_acc_std") or 0.0 for _, r in shown], visible=True),
        hovertext=[f"trial {r.get('trial')}: {r.get('point')}<br>val {r['kd_val_acc']:.4f}; test "
                   f"{r.get('kd_test_acc_mean', float('nan')):.4f} (reported, not used to choose)" for _, r in shown],
        hoverinfo="text"))
    if best is not None and 0 <= best < len(rows) and rows[best].get(column) is not None:
        fig.add_trace(go.Scatter(x=[rows[best][column]], y=[rows[best]["kd_val_acc"]], mode="markers", name="picked",
                                 marker=PICK_MARKER, hoverinfo="skip"))
    fig.update_xaxes(title=label)
    fig.update_yaxes(title=VAL)
    return _restyle(fig, f"Val accuracy against {label}", note="one objective: the pick reads val accuracy only")
