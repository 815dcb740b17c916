"""kdlab dashboard entry point: `streamlit run dashboard/app.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the project root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="kdlab", page_icon=str(ROOT / "assets" / "logo.png"), layout="wide")

pages = [
    st.Page(str(ROOT / "dashboard" / "pages" / "setup.py"), title="Setup", icon=":material/tune:", default=True),
]
st.navigation(pages).run()
