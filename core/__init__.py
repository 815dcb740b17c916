"""kdlab core engine: data, models, training, config and CLI. Never imports streamlit."""
