"""idstream's pure identity core: normalizers, the identity graph, policies, golden profiles.

No I/O and no imports from the other idstream packages: stores and streams are
built around this package, never the other way round.
"""

from identity.errors import (
    ConfigurationError,
    IdstreamError,
    InvalidIdentifier,
    InvalidInput,
    TransientError,
    UnsupportedEvent,
)
from identity.graph import ApplyResult, Conflict, Evidence, IdentityGraph, Match, ProfileChange, profile_id_for
from identity.normalize import KINDS_V1, Identifier, JunkPolicy, Normalizer, NormalizerConfig, Rejection
from identity.policy import ResolutionPolicy
from identity.touch import CallInfo, CrmInfo, Touch, TouchType, Utm

__all__ = [
    "KINDS_V1",
    "ApplyResult",
    "CallInfo",
    "ConfigurationError",
    "Conflict",
    "CrmInfo",
    "Evidence",
    "Identifier",
    "IdentityGraph",
    "IdstreamError",
    "InvalidIdentifier",
    "InvalidInput",
    "JunkPolicy",
    "Match",
    "Normalizer",
    "NormalizerConfig",
    "ProfileChange",
    "Rejection",
    "ResolutionPolicy",
    "Touch",
    "TouchType",
    "TransientError",
    "UnsupportedEvent",
    "Utm",
    "profile_id_for",
]
