"""Pure figure builders: frames, dicts or arrays in, plotly figures out (unit-tested without a browser).

No streamlit here. Inputs are what a run writes (results.json, test_outputs.safetensors, events)
or small numbers for the Learn page. Bad input (a missing column or key, wrong shapes) raises
ValueError with a message naming what to pass; input with nothing to draw yet (no rows, no
students, a diagnostics dict that recorded an error) gives `empty_figure(message)`, which
`is_empty` recognises.

    from dashboard import figures
    figures.tradeoff(results["comparison"], x="params")
"""

from dashboard.figures.base import KIND_COLOURS, empty_figure, is_empty
from dashboard.figures.budget import budget_curve
from dashboard.figures.compare import ABSENT, config_diff, flatten
from dashboard.figures.curves import MAX_POINTS, source_kind, training_curves, training_curves_side_by_side
from dashboard.figures.diagnostics import (bins_ece, bvd_bars, disagreement_heatmap, diversity_growth,
                                           error_correlation_heatmap, reliability_diagram, student_variance)
from dashboard.figures.kd_pays import kd_pays_caption, kd_pays_curve, read_kd_pays
from dashboard.figures.outputs import disagreement_gallery, weights_histogram
from dashboard.figures.samples import model_cost_bars, sample_grid
from dashboard.figures.teaching import (averaging_demo, centroid_demo, centroids, deployment_cost,
                                        kd_gradient_scale, kd_loss_parts, softmax, softmax_temperature)
from dashboard.figures.pareto import COSTS, pareto_front, tradeoff
from dashboard.figures.search import (STATE_COLOURS, search_history, search_importance, search_parallel,
                                      search_pareto, search_scatter)
from dashboard.figures.sweep import sweep_chart

__all__ = ["ABSENT", "COSTS", "KIND_COLOURS", "MAX_POINTS", "STATE_COLOURS", "averaging_demo", "bins_ece",
           "budget_curve", "bvd_bars", "centroid_demo", "centroids", "config_diff", "deployment_cost",
           "disagreement_gallery", "disagreement_heatmap", "diversity_growth", "empty_figure",
           "error_correlation_heatmap", "flatten", "is_empty", "kd_gradient_scale", "kd_loss_parts",
           "kd_pays_caption", "kd_pays_curve", "model_cost_bars", "pareto_front", "read_kd_pays",
           "reliability_diagram", "sample_grid", "search_history",
           "search_importance", "search_parallel", "search_pareto", "search_scatter", "softmax",
           "softmax_temperature", "source_kind", "student_variance", "sweep_chart", "tradeoff",
           "training_curves", "training_curves_side_by_side", "weights_histogram"]
