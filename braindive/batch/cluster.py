"""Joining Ray (a local instance or an existing cluster) with this package shipped to every worker.

Workers get the code through Ray's ``runtime_env``: ``py_modules`` holds the ``braindive`` package
folder (and ``training`` for ``training.fanout``). Ray uploads it once per content hash and every
worker, on any node, imports it from there, first on its ``sys.path``: no shared file system, no
``PYTHONPATH``, and workers run the driver's code even where another braindive is installed. The
upload includes the package data (the demo assets, about 12 MB), so a worker on another machine can
load the demo model.

Token authentication (Ray 2.60, the pinned version): ``ray start --head`` enables it when a token exists
(``~/.ray/auth_token``, ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``; any local ``ray.init()`` writes
one), but a driver given an explicit address keeps it off unless ``RAY_AUTH_MODE=token``, and then
fails with "InvalidAuthToken" after retrying for tens of seconds. ``connect`` turns token mode on for
such a driver when a token is available here (a cluster without authentication accepts it too), and
otherwise explains what to set when the connection fails (docs/batch.md).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["connect", "runtime_env", "AUTH_HELP"]

_EXCLUDES = ["__pycache__", "*.pyc"]
AUTH_HELP = ("If the cluster uses token authentication (with Ray 2.60 `ray start --head` enables it when a token "
             "exists), make the head's token available here (`ray get-auth-token` on the head prints it; put it in "
             "~/.ray/auth_token or RAY_AUTH_TOKEN) and set RAY_AUTH_MODE=token; see docs/batch.md.")


def runtime_env(*modules) -> dict:
    """Ray's ``runtime_env`` that ships the folders of the packages ``modules`` to every worker."""
    return {"py_modules": [str(Path(module.__file__).resolve().parent) for module in modules], "excludes": _EXCLUDES}


def connect(address: str | None = None, num_cpus: int | None = None, modules=None, log=None) -> bool:
    """Join Ray at ``address`` or start a local instance sized to the machine; True if this call started it.

    ``modules``: the packages workers need (default ``braindive``), shipped through ``runtime_env``.
    """
    import ray
    from ray.exceptions import AuthenticationError

    import braindive

    if ray.is_initialized():
        return False
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if address not in (None, "auto") and _enable_token_auth():
        log(f"Ray: an authentication token is available on this machine, so RAY_AUTH_MODE=token for {address}.")
    try:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env(*(modules or (braindive,))))
    except (ConnectionError, AuthenticationError) as exc:  # AuthenticationError: token mode on, no token found
        if address is None:
            raise
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectionError(f"Could not connect to the Ray cluster at {address} (RAY_AUTH_MODE={mode}): "
                              f"{reason} {AUTH_HELP}") from exc
    return True


def _enable_token_auth() -> bool:
    """Token mode for this process when ``RAY_AUTH_MODE`` is unset and a token is available (what Ray itself
    does for ``address="auto"``); True if this turned it on."""
    if "RAY_AUTH_MODE" in os.environ:
        return False
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
