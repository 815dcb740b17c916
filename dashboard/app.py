"""kdlab dashboard entry point: `streamlit run dashboard/app.py`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep (see core/__init__.py); set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the project root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="kdlab", page_icon=str(ROOT / "assets" / "logo.png"), layout="wide")

# Not named pages/: Streamlit would also list that folder's files as pages when a page is opened
# by its URL, beside the titled navigation below.
PAGES = ROOT / "dashboard" / "views"
pages = [
    st.Page(str(PAGES / "setup.py"), title="Setup", icon=":material/tune:", default=True),
    st.Page(str(PAGES / "runs.py"), title="Runs", icon=":material/monitoring:"),
    st.Page(str(PAGES / "tradeoff.py"), title="Trade-off", icon=":material/scatter_plot:"),
    st.Page(str(PAGES / "diagnostics.py"), title="Diagnostics", icon=":material/insights:"),
    st.Page(str(PAGES / "compare.py"), title="Compare", icon=":material/compare:"),
    st.Page(str(PAGES / "search.py"), title="Search", icon=":material/travel_explore:"),
    st.Page(str(PAGES / "learn.py"), title="Learn", icon=":material/school:"),
]
from dashboard.access import gate, may_operate  # noqa: E402 - after set_page_config, which must come first
from dashboard.store_health import guard  # noqa: E402

gate()  # class mode: the password first; nothing below runs for a session without it
navigation = st.navigation(pages)
guard(can_repair=may_operate())  # a damaged run store: one message and the fix, not a traceback on every page
navigation.run()
