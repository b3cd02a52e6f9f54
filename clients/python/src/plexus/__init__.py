"""Plexus client: federated statistics from Python over the coordinator's HTTP/JSON API.

    import plexus
    net = plexus.Network.from_connect_file("demo/connect.json")
    study = net.study("aaa-validation")
    fit = study.glm("death ~ age + smoking + diabetes", family="binomial")
    fit.tidy(exponentiate=True)
"""

from .errors import (
    DataError,
    DisclosureRefused,
    InternalError,
    InvalidQuery,
    NotFound,
    PlexusConnectionError,
    PlexusError,
    PolicyRefused,
    QueryTimeout,
    Unauthenticated,
    Unavailable,
    VerificationFailed,
)
from .network import Network
from .results import (
    CountResult,
    CoxResult,
    GbdtResult,
    GlmResult,
    HistogramResult,
    KmResult,
    PerformanceResult,
    Provenance,
    Result,
    SummaryByResult,
    SummaryResult,
    TableResult,
    result_from_json,
)
from .study import Budget, QueryHandle, Study

__version__ = "0.1.0"

__all__ = [
    "Network",
    "Study",
    "QueryHandle",
    "Budget",
    "Result",
    "CountResult",
    "SummaryResult",
    "SummaryByResult",
    "TableResult",
    "HistogramResult",
    "GlmResult",
    "CoxResult",
    "KmResult",
    "GbdtResult",
    "PerformanceResult",
    "Provenance",
    "result_from_json",
    "PlexusError",
    "InvalidQuery",
    "PolicyRefused",
    "DisclosureRefused",
    "DataError",
    "NotFound",
    "Unavailable",
    "InternalError",
    "Unauthenticated",
    "QueryTimeout",
    "VerificationFailed",
    "PlexusConnectionError",
]
