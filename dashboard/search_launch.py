"""Launch a sweep from Setup: a grid or an Optuna search over student settings of the form's config.

The space editor has a row per searched field: listed values (a grid needs these), or a range with
low, high and a log-scale checkbox. Then the algorithm, the budget, a second objective, pruning and
seeds. Every input is checked by the engine's own functions (`core.search.space.parse_dimension`,
`core.search.spec.make_spec`, `core.sweep_grid.sweep_trainings` for a grid), so the form refuses
exactly what `kdlab sweep` refuses, with the same one-line message. The job manager trains it.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any

import streamlit as st

from core.config import RunConfig, StudentConfig
from core.errors import KdlabError
from core.search.space import Dimension, parse_dimension
from core.search.spec import EXECUTORS, OBJECTIVES, PRUNERS, SEARCHES, SearchSpec, make_spec
from core.sweep_grid import COMMON_AXES, Axis, sweep_trainings
from dashboard import fields
from dashboard.access import may_operate
from dashboard.state import job_manager

SPACE_ROWS = 3        # fields offered on the form; the CLI takes any number
VALUES, RANGE = "values", "range"
NO_SECOND = "none"
SEARCH_HELP = {"grid": "every combination of the listed values (ranges need another algorithm)",
               "random": "values drawn at random from each range or list",
               "tpe": "Optuna's TPE: after a few random trials, values near the best so far",
               "nsga2": "Optuna's NSGA-II: evolves a Pareto set; needs a second objective"}
PRUNE_HELP = ("Stop a trial early when its first distilled student's val accuracy after an epoch is behind the "
              "other trials' (median) or in the bottom of a successive-halving rung (asha). One objective only.")


@dataclass(frozen=True)
class SpaceRow:
    """One row of the space editor as typed: a field, and its listed values or its range."""

    field: str
    kind: str = VALUES          # VALUES or RANGE
    values: str = ""
    low: str = ""
    high: str = ""
    log: bool = False

    def text(self) -> str | None:
        """The row as `kdlab sweep --space` text, or None for a row left empty."""
        if not self.field.strip():
            return None
        if self.kind == RANGE:
            if not (self.low.strip() or self.high.strip()):
                return None
            return f"{self.field.strip()}={self.low.strip()}..{self.high.strip()}{':log' if self.log else ''}"
        return f"{self.field.strip()}={self.values}" if self.values.strip() else None


def dimensions(rows: list[SpaceRow]) -> list[Dimension]:
    """The space of the filled rows, in order; raises the ConfigError of the first bad row."""
    return [parse_dimension(text) for text in (r.text() for r in rows) if text is not None]


def duplicates(rows: list[SpaceRow], dims: list[Dimension]) -> list[str]:
    """Warnings for listed values given more than once (each is tried once)."""
    typed = {r.field.strip(): [v for v in r.values.split(",") if v.strip()] for r in rows if r.kind == VALUES}
    return [f"{d.field}: a value is given more than once; each is tried once" for d in dims
            if d.choices is not None and len(typed.get(d.field, ())) > len(d.choices)]


EXECUTOR_HELP = ("local: one trial at a time in this app's worker thread; processes: several trials at once in "
                 "worker processes on this machine (small students cannot use every core alone); ray: Ray Tune "
                 "trials on a Ray cluster, or on a Ray started here for the sweep (pip install 'kdlab[ray]')")


def build_spec(cfg: RunConfig, dims: list[Dimension], *, search: str, trials: int | None, second: str,
               prune: str, seeds: int | None, sampler_seed: int, executor: str = "local",
               workers: int | None = None, ray_address: str | None = None) -> tuple[SearchSpec, int | None]:
    """The checked search and, for a grid, its exact number of trainings (None for other searches).

    A grid is checked point by point first, so a bad value names its grid point, as `kdlab sweep
    --grid` does; everything else is make_spec's check, the CLI's.
    """
    total = None
    if search == "grid" and dims and all(d.choices is not None for d in dims):
        total = sweep_trainings(cfg, [Axis(d.field, tuple(d.choices or ())) for d in dims], seeds)
    objectives = "val_acc" if second == NO_SECOND else f"val_acc,{second}"
    spec = make_spec(cfg, search=search, space=dims, trials=None if search == "grid" else trials,
                     objectives=objectives, prune=prune, seeds=seeds, sampler_seed=sampler_seed,
                     executor=executor, workers=workers if executor != "local" else None,
                     ray_address=ray_address if executor == "ray" and ray_address else None)
    return spec, total


def where_it_runs(spec: SearchSpec) -> str:
    """One line: where a search's trials run."""
    if spec.executor == "local":
        return "Runs in this app's queue, one trial at a time."
    if spec.executor == "processes":
        return f"Runs in {spec.workers} worker processes on this machine (from this app's queue)."
    address = spec.ray_address or os.environ.get("RAY_ADDRESS")
    return (f"Runs as Ray Tune trials, {spec.workers} at once, on " +
            (f"the Ray cluster at {address}" if address else "a local Ray started for the sweep") +
            " (from this app's queue); the store follows every trial.")


def cost_words(cfg: RunConfig, spec: SearchSpec, total: int | None) -> tuple[str, str]:
    """What the sweep trains: a one-line count, and the same in words."""
    seeds = spec.seeds or cfg.student.seeds
    teachers = sum(t.seeds for t in cfg.teachers)
    if total is not None:  # a grid: exact, scratch students counted once per student setting
        line = f"{spec.trials} point(s) x {seeds} seed(s): {total} trainings, teachers included."
        words = (f"{teachers} teacher draw(s) trained once, then for each of the {spec.trials} grid points a "
                 f"distilled student per seed; the scratch students they are compared with are trained once per "
                 f"student setting.")
        return line, words
    students = spec.trials * seeds * 2
    line = (f"{spec.trials} trial(s) x {seeds} seed(s) x 2 student trainings + {teachers} teacher draw(s): at most "
            f"{students + teachers} trainings.")
    words = (f"{teachers} teacher draw(s) trained once, then up to {spec.trials} trials, each a distilled and a "
             f"scratch student per seed; trials with the same student settings share their scratch students"
             + (", and pruned trials stop early." if spec.prune != "none" else "."))
    return line, words


def command(spec: SearchSpec) -> str:
    """The same sweep headless, as `kdlab sweep` reads it."""
    return shlex.join(["kdlab", "sweep", "config.yaml", *spec.command_args()])


def _space_rows() -> list[SpaceRow]:
    rows = []
    for i in range(SPACE_ROWS):
        name, kind, rest = st.columns([2, 1, 3])
        field = name.selectbox(f"Axis {i + 1}", ["", *COMMON_AXES], key=f"sweep_axis_{i}", accept_new_options=True,
                               help="A field the sweep varies: any distill.* or student.* field, or "
                                    "ensemble.scheme (type another name to use it).") or ""
        how = kind.radio(f"Kind of axis {i + 1}", [VALUES, RANGE], key=f"search_kind_{i}", horizontal=True,
                         disabled=not field, label_visibility="hidden",
                         help="values: a comma-separated list (a grid needs these); range: LOW..HIGH")
        if how == RANGE:
            low, high, log = rest.columns([2, 2, 1])
            rows.append(SpaceRow(field, RANGE, low=low.text_input(f"Low of axis {i + 1}", key=f"search_low_{i}",
                                                                  disabled=not field),
                                 high=high.text_input(f"High of axis {i + 1}", key=f"search_high_{i}",
                                                      disabled=not field),
                                 log=log.checkbox("log scale", key=f"search_log_{i}", disabled=not field)))
        else:
            rows.append(SpaceRow(field, VALUES, values=rest.text_input(
                f"Values of axis {i + 1}", key=f"sweep_values_{i}", placeholder="e.g. 1, 2, 4", disabled=not field)))
    return rows


def _settings(cfg: RunConfig | None) -> dict[str, Any]:
    a, b, c, d = st.columns(4)
    search = a.selectbox("Algorithm", SEARCHES, key="search_algorithm",
                         help="; ".join(f"{k}: {v}" for k, v in SEARCH_HELP.items()))
    trials = b.number_input("Trials", min_value=1, max_value=1000, value=8, step=1, key="search_trials",
                            disabled=search == "grid", help="Trials to finish, pruned and failed ones included "
                            "(a grid trains every point)")
    second = c.selectbox("Second objective", [NO_SECOND, *[o for o in OBJECTIVES if o != "val_acc"]],
                         key="search_objective",
                         help="Val accuracy is always an objective. " + "; ".join(
                             f"{o.key}: {o.help} ({o.direction})" for o in OBJECTIVES.values()))
    prune = d.selectbox("Pruning", PRUNERS, key="search_prune", help=PRUNE_HELP)
    a, b, c, d = st.columns(4)
    # StudentConfig.seeds' range and help; the form's student seeds as the starting value
    seeds = fields.number_input_for(StudentConfig, "seeds", {"seeds": cfg.student.seeds} if cfg else {},
                                    key="sweep_seeds", label="Student seeds per point", container=a)
    sampler_seed = b.number_input("Sampler seed", min_value=0, value=0, step=1, key="search_sampler_seed",
                                  help="The same seed and space draw the same trials")
    executor = c.selectbox("Executor", EXECUTORS, key="search_executor", help=EXECUTOR_HELP)
    cores = os.cpu_count() or 1
    workers = d.number_input("Trials at once", min_value=1, max_value=64, value=cores, step=1,
                             key="search_workers", disabled=executor == "local",
                             help=f"Worker processes or Ray trials at once, each with {cores} // K torch threads "
                                  f"({cores} cores here)")
    address = None
    if executor == "ray":
        address = st.text_input("Ray cluster address", key="search_ray_address", placeholder="HOST:PORT",
                                help="The head of an existing Ray cluster; empty: $RAY_ADDRESS, else a local Ray "
                                     "started for the sweep and stopped after it") or None
    return {"search": search, "trials": int(trials), "second": second, "prune": prune, "seeds": seeds,
            "sampler_seed": int(sampler_seed), "executor": executor, "workers": int(workers), "ray_address": address}


def launcher(cfg: RunConfig | None) -> None:
    """'Sweep student settings': the space, the search and its cost, the command, and Launch."""
    with st.expander("Sweep student settings: a grid or an Optuna search"):
        st.caption("Train these teachers once, then a distilled and a scratch student per seed for every trial: "
                   "each combination of listed values (grid), or values an Optuna sampler draws from the ranges "
                   "and lists below. Trials are ranked by the distilled students' val accuracy (test accuracy is "
                   "only reported); follow the sweep on the Search page.")
        rows = _space_rows()
        settings = _settings(cfg)
        try:
            dims = dimensions(rows)
        except KdlabError as err:
            st.error(str(err))
            return
        for warning in duplicates(rows, dims):
            st.warning(warning)
        spec = None
        if cfg is not None and dims:
            try:
                spec, total = build_spec(cfg, dims, **settings)
            except KdlabError as err:
                st.error(str(err))
                return
            line, words = cost_words(cfg, spec, total)
            st.caption(line)
            st.caption(words)
            st.caption(f"Pick rule: {spec.pick_rule()}.")
            st.caption(where_it_runs(spec))
            st.caption("The same sweep headless, with the YAML under 'Run it headless' saved as config.yaml:")
            st.code(command(spec), language="bash")
        grid = settings["search"] == "grid"
        if st.button("Launch sweep" if grid else "Launch search", disabled=spec is None, key="sweep_launch") \
                and may_operate() and spec is not None:
            _launch(cfg, spec, grid)


def _launch(cfg: RunConfig | None, spec: SearchSpec, grid: bool) -> None:
    manager = job_manager()
    try:
        sweep_id = manager.submit_search(cfg, spec)
    except KdlabError as err:
        st.error(str(err))
        return
    st.session_state["sweep_dir"] = str(manager.store.get_sweep(sweep_id).sweep_dir)  # the Compare page's
    st.session_state["search_sweep"] = sweep_id  # the Search page opens it
    where = "follow it on the Compare page or the Search page" if grid else "follow it on the Search page"
    st.success(f"queued {sweep_id}: {where}")

