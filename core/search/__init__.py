"""Hyperparameter searches over the students (`kdlab sweep --space ...`), run with Optuna.

Only the space is re-exported here: it is light (configs, no torch, no Optuna at import), so
`import core.search` stays cheap for the CLI's and the dashboard's checks.
"""

from core.search.space import (Dimension, check_space, grid_search_space, parse_dimension, read_space,
                               space_from_axes, space_json)

__all__ = ["Dimension", "check_space", "grid_search_space", "parse_dimension", "read_space", "space_from_axes",
           "space_json"]
