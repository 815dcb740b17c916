"""Class mode: a password at the door, and a viewer role that watches without taking over the machine.

Local use (the default: `make run`, or `streamlit run dashboard/app.py`, bound to 127.0.0.1 by
.streamlit/config.toml) needs no password and every session may do everything. Class mode is on when
the operator sets a class password (`KDLAB_PASSWORD`, or `kdlab_password` in Streamlit's secrets):
every browser session must give it first and is then a **viewer**: every page and every live run,
but no Launch, Cancel, Resume, Export, store repair, and no paths to type. Whoever gives the
operator password (`KDLAB_OPERATOR_PASSWORD` / `kdlab_operator_password`, optional) is the
**operator**. The checks run on the server for every action (`may_operate`), so a session that never
showed a button cannot trigger it with a crafted request either.

Passwords are compared in constant time (hmac.compare_digest) and never logged or echoed.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

import streamlit as st

log = logging.getLogger(__name__)

CLASS_ENV, OPERATOR_ENV = "KDLAB_PASSWORD", "KDLAB_OPERATOR_PASSWORD"
CLASS_SECRET, OPERATOR_SECRET = "kdlab_password", "kdlab_operator_password"
ROLE_KEY = "kdlab_role"
OPERATOR, VIEWER = "operator", "viewer"


def _secret(env: str, name: str) -> str | None:
    value = os.environ.get(env)
    if value:
        return value
    try:
        found = st.secrets.get(name)
    except Exception as err:  # noqa: BLE001 - no secrets.toml (the usual case): the environment decides
        log.debug("no Streamlit secrets (%s); using the environment only", type(err).__name__)
        return None
    return str(found) if found else None


def class_password() -> str | None:
    """The class password, if the operator set one (class mode is then on)."""
    return _secret(CLASS_ENV, CLASS_SECRET)


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bound_to_network() -> bool:
    """Whether this server listens beyond the loopback interface."""
    address = str(st.get_option("server.address") or "0.0.0.0")  # unset: Streamlit binds every interface
    if address == "localhost":
        return False
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:
        return True  # a host name: assume it is reachable


def role() -> str:
    """This session's role: operator (local use, or the operator password) or viewer."""
    if class_password() is None:
        return OPERATOR
    return st.session_state.get(ROLE_KEY, VIEWER)


def may_operate() -> bool:
    """Whether this session may launch, cancel, resume, export, repair or type paths."""
    return role() == OPERATOR


def refuse(action: str) -> None:
    """Say why an action is not there for a viewer."""
    st.caption(f"{action}: only the operator can do this in class mode.")


def gate() -> None:
    """Stop the page unless this session may see it: the class password in class mode; never open to a network unguarded."""
    password = class_password()
    if password is None:
        if _bound_to_network():
            st.error(f"This dashboard listens on a network address ({st.get_option('server.address')}) without a "
                     f"password. Set {CLASS_ENV} (and {OPERATOR_ENV} for yourself) and start it again, e.g. "
                     "`make class`; or bind it to 127.0.0.1 (the default of `make run`).")
            st.stop()
        return
    if ROLE_KEY in st.session_state:
        return
    st.title("kdlab")
    with st.form("login"):
        given = st.text_input("Password", type="password", key="login_password")
        entered = st.form_submit_button("Enter")
    if entered:
        if _same(given, _secret(OPERATOR_ENV, OPERATOR_SECRET)):
            st.session_state[ROLE_KEY] = OPERATOR
        elif _same(given, password):
            st.session_state[ROLE_KEY] = VIEWER
        else:
            log.info("a wrong class-mode password was given")  # never the password itself
            st.error("Wrong password.")
            st.stop()
        st.session_state.pop("login_password", None)
        st.rerun()
    st.stop()
