"""Host-device synchronisation: which calls make the host wait for the GPU (`rules`) and the spy that
finds each one in a forward pass, with its module and line (`spy`)."""
from __future__ import annotations

from .rules import (
    COPY,
    EXPLICIT,
    HINTS,
    OTHER,
    SCALAR,
    SHAPE,
    SyncPoint,
    dispatch_syncs,
    matches_allow,
    op_text,
    sync_kind,
)
from .spy import SyncSpy, locate_sync

__all__ = ["COPY", "EXPLICIT", "HINTS", "OTHER", "SCALAR", "SHAPE", "SyncPoint", "SyncSpy", "dispatch_syncs",
           "locate_sync", "matches_allow", "op_text", "sync_kind"]
