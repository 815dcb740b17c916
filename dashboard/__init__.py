"""kdlab dashboard: Streamlit pages over the core engine. Pages draw and submit; they never train."""
