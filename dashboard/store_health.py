"""One clear message, on every page, when the run store is damaged or worth a word, with the fix as buttons.

app.py calls `guard()` before it runs any page, so no page meets a damaged `kdlab.db` on its own
(each used to show its own traceback). A damaged file stops the page with the message and two
buttons: move it aside and start a fresh store, then rebuild the rows from the run folders, which
are never touched. A notice (an empty file was replaced by a fresh store) shows above the page.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from core.store import RunStore, StoreError, recover_store, store_damaged, store_problem


log = logging.getLogger(__name__)


def _reindex(data_dir: str | Path | None) -> None:
    # A store of its own: the job manager's store sees the fresh file on its next call (it checks the inode).
    with RunStore(data_dir) as store:
        report = store.reindex()
    st.success(f"Rebuilt from the run folders: {report.summary()}")


def guard(data_dir: str | Path | None = None, *, can_repair: bool = True) -> None:
    """Show what is wrong with the run store (and stop the page if it cannot be read); repair buttons if allowed."""
    problem = store_problem(data_dir)
    if problem is None:
        return
    if not store_damaged(data_dir):
        st.warning(problem)
        if can_repair and st.button("Rebuild runs from the run folders", key="store_reindex"):
            _reindex(data_dir)
        return
    st.error(problem)
    if can_repair:
        st.caption("Moving the file aside deletes nothing: it is renamed kdlab.db.damaged-<time>, and the runs are "
                   "then read back from their folders (config.yaml, events.jsonl, results.json).")
        if st.button("Move the damaged file aside, start a fresh store and rebuild it", key="store_recover",
                     type="primary"):
            try:
                moved = recover_store(data_dir)
            except StoreError as err:
                st.error(str(err))
                st.stop()
            st.success(f"The damaged file is now {moved}.")
            _reindex(data_dir)
            st.button("Open the pages", key="store_continue")
    st.stop()
