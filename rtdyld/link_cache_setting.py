"""Whether a session uses a link cache, decided without importing one.

:mod:`rtdyld.linkcache` brings hashing, JSON, its container format and the
batch-plan machinery, ~10 ms of imports that a session without a cache (the
usual ``rtdyld run``) would pay for nothing.
"""

from __future__ import annotations

import os

ENV = "RTDYLD_LINK_CACHE"  # the link cache directory, when set and not empty


def open_link_cache(setting):
    """:func:`rtdyld.linkcache.open_link_cache`, importing the link cache only
    when ``setting`` (or, for None, the environment) asks for one."""
    if setting is False or (setting is None and not os.environ.get(ENV)):
        return None
    from .linkcache import open_link_cache

    return open_link_cache(setting)
