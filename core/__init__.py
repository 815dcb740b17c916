"""kdlab core engine: data, models, training, ensembles, distillation, diagnostics, store, jobs and CLI.

Never imports streamlit.
"""

import os

# Idle OpenMP threads sleep instead of spinning. Set before torch is first imported (libgomp reads it
# once). kdlab runs torch from several threads (job workers, the dashboard, cost measurement) on
# machines it shares; with spinning threads a test run on a busy 2-core machine took 250 s instead of
# 30 s. A user's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
