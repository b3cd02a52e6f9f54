"""Queries on one study: build the QueryRequest, submit it, wait for the result.

Every analysis method builds the JSON body of ``POST
/v1/studies/{id}/queries`` (docs/src/reference/query-format.md, with the text
forms ``where`` and ``formula``), submits it, and polls ``GET
/v1/queries/{id}?wait_ms=...`` in bounded waits until the query is no longer
pending. A wait that runs out raises :class:`~plexus.QueryTimeout` with the
query id; :meth:`Study.handle` resumes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import PlexusError, QueryTimeout, error_from_object
from .results import (
    CountResult,
    CoxResult,
    GlmResult,
    HistogramResult,
    KmResult,
    Result,
    SummaryByResult,
    SummaryResult,
    TableResult,
    result_from_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network

__all__ = ["Study", "QueryHandle", "Budget", "DEFAULT_QUERY_TIMEOUT", "build_request"]

#: Seconds a query method waits for its result by default.
DEFAULT_QUERY_TIMEOUT = 300.0
#: The longest single wait the API allows (``wait_ms`` is at most 60000).
MAX_WAIT_MS = 60_000
_POLL_WAIT_MS = 20_000

Where = Union[str, Mapping[str, Any], None]
Grid = Union[Tuple[float, float, float], Sequence[float], Mapping[str, float]]


def _r_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def and_where(where: Where, variable: str, level: Any) -> Union[str, Dict[str, Any]]:
    """``where`` and ``variable == level``: as text when ``where`` is text, else as a cohort tree."""
    if isinstance(where, str) and where.strip():
        return f"({where}) & {variable} == {_r_literal(level)}"
    condition: Dict[str, Any] = {"compare": {"variable": variable, "op": "=", "value": level}}
    if not isinstance(where, Mapping):
        return condition  # None or blank text: no cohort
    return {"and": [dict(where), condition]}


def build_request(analysis: Mapping[str, Any], where: Where = None, by_site: bool = False,
                  rho: Optional[float] = None) -> Dict[str, Any]:
    """A QueryRequest body: the analysis, ``where`` (text) or ``cohort`` (a tree), ``by_site`` and ``rho``."""
    body: Dict[str, Any] = {}
    if isinstance(where, str) and where.strip():
        body["where"] = where
    elif isinstance(where, Mapping):
        body["cohort"] = dict(where)
    elif where not in (None, ""):
        raise TypeError(f"where is a cohort expression (text) or a cohort tree (dict), not {type(where).__name__}")
    body["analysis"] = dict(analysis)
    if by_site:
        body["by_site"] = True
    if rho is not None:
        body["rho"] = float(rho)
    return body


def _grid(grid: Grid) -> Any:
    if isinstance(grid, Mapping):
        return {"from": grid["from"], "to": grid["to"], "step": grid["step"]}
    if isinstance(grid, tuple) and len(grid) == 3:
        return {"from": grid[0], "to": grid[1], "step": grid[2]}
    return list(grid)


@dataclass
class Budget:
    """A study's privacy budget as the coordinator accounts it (zCDP rho; epsilon at ``delta``)."""

    study_id: str
    exact: bool
    budget_rho: float
    spent_rho: float
    remaining_rho: float
    delta: float
    epsilon_spent: float
    epsilon_budget: float
    queries_charged: int
    #: Each node's own account: node_id, spent_rho, budget_rho, updated_unix_ms.
    nodes: List[Dict[str, Any]] = field(default_factory=list)
    #: The JSON as returned.
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, b: Mapping[str, Any]) -> "Budget":
        """Reads the ``/v1/studies/{id}/budget`` answer."""
        def f(name: str) -> float:
            v = b.get(name)
            return float("nan") if v is None else float(v)
        return cls(study_id=str(b.get("study_id")), exact=bool(b.get("exact")), budget_rho=f("budget_rho"),
                   spent_rho=f("spent_rho"), remaining_rho=f("remaining_rho"), delta=f("delta"),
                   epsilon_spent=f("epsilon_spent"), epsilon_budget=f("epsilon_budget"),
                   queries_charged=int(b.get("queries_charged") or 0), nodes=list(b.get("nodes") or []), raw=dict(b))


class QueryHandle:
    """A submitted query; :meth:`result` waits for it (and may be called again after a timeout)."""

    def __init__(self, network: "Network", query_id: str, study_id: Optional[str] = None,
                 request: Optional[Mapping[str, Any]] = None) -> None:
        self.network = network
        #: The coordinator's id for the query.
        self.query_id: str = query_id
        self.study_id: Optional[str] = study_id
        #: The body that was submitted, when this handle submitted it.
        self.request: Optional[Dict[str, Any]] = dict(request) if request is not None else None
        #: The last QueryResult envelope seen.
        self.last: Optional[Dict[str, Any]] = None

    def poll(self, wait_ms: int = 0) -> Dict[str, Any]:
        """One ``GET /v1/queries/{id}?wait_ms=...``: the QueryResult envelope, pending or not."""
        wait_ms = max(0, min(int(wait_ms), MAX_WAIT_MS))
        envelope = self.network.request("GET", f"/v1/queries/{self.query_id}", params={"wait_ms": wait_ms},
                                        timeout=wait_ms / 1000 + 30)
        self.last = dict(envelope)
        return self.last

    @property
    def status(self) -> str:
        """``pending``, ``succeeded`` or ``failed`` (asks the coordinator without waiting)."""
        return str(self.poll(0).get("status"))

    def result(self, timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT) -> Result:
        """Waits up to ``timeout`` seconds (``None``: for ever) and returns the result.

        A failed query raises the exception of its error code; a query still
        pending when the time runs out raises :class:`~plexus.QueryTimeout`
        (the query keeps running; call ``result`` again to keep waiting).
        """
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            if deadline is None:
                wait = _POLL_WAIT_MS
            else:
                wait = int(max(0.0, min(deadline - time.monotonic(), _POLL_WAIT_MS / 1000)) * 1000)
            envelope = self.poll(wait)
            status = envelope.get("status")
            if status == "succeeded":
                return result_from_json(envelope.get("result") or {}, envelope)
            if status == "failed":
                err = envelope.get("error") or {"code": "internal", "message": "the query failed without an error"}
                raise error_from_object(err, query_id=self.query_id)
            if status != "pending":
                raise PlexusError("internal", f"query {self.query_id} has an unknown status {status!r}",
                                  query_id=self.query_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise QueryTimeout(
                    None,
                    f"query {self.query_id} is still pending after {timeout} s; it keeps running: "
                    f"call .result() on study.handle({self.query_id!r}) to keep waiting",
                    query_id=self.query_id,
                )

    def __repr__(self) -> str:
        return f"<QueryHandle {self.query_id} on {self.study_id}>"


class Study:
    """One study of the network: its definition (:attr:`info`) and its analyses.

    Every analysis method takes ``where`` (a cohort expression such as
    ``'age >= 65 & sex == "M"'``, or a cohort tree dict), ``by_site`` (also
    answer per site), ``rho`` (privacy budget to spend, in a private study)
    and ``timeout`` (seconds to wait for the result).
    """

    def __init__(self, network: "Network", study_id: str, info: Optional[Mapping[str, Any]] = None) -> None:
        self.network = network
        self.id: str = study_id
        #: The study's definition as the coordinator returned it (title, purpose, analyses, privacy ...).
        self.info: Dict[str, Any] = dict(info or {})

    def __repr__(self) -> str:
        title = self.info.get("title")
        return f"<plexus.Study {self.id}{': ' + title if title else ''}>"

    @property
    def exact(self) -> bool:
        """Whether the study answers exactly (no differential privacy)."""
        return bool((self.info.get("privacy") or {}).get("exact"))

    # -- submission -------------------------------------------------------------------------------------------

    def submit(self, request: Mapping[str, Any]) -> QueryHandle:
        """POSTs a QueryRequest body as is and returns its handle without waiting."""
        answer = self.network.request("POST", f"/v1/studies/{self.id}/queries", json_body=dict(request))
        return QueryHandle(self.network, str(answer["query_id"]), self.id, request)

    def handle(self, query_id: str) -> QueryHandle:
        """A handle on a query submitted earlier (to resume waiting after a :class:`~plexus.QueryTimeout`)."""
        return QueryHandle(self.network, query_id, self.id)

    def query(self, request: Mapping[str, Any], timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT) -> Result:
        """Submits a QueryRequest body and waits for its result."""
        return self.submit(request).result(timeout)

    def _run(self, analysis: Mapping[str, Any], where: Where, by_site: bool, rho: Optional[float],
             timeout: Optional[float]) -> Result:
        return self.query(build_request(analysis, where, by_site, rho), timeout)

    # -- analyses ---------------------------------------------------------------------------------------------

    def count(self, where: Where = None, *, by_site: bool = False, rho: Optional[float] = None,
              timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT) -> CountResult:
        """The number of patients in the cohort (``None`` in ``.n`` when suppressed)."""
        return self._run({"count": {}}, where, by_site, rho, timeout)  # type: ignore[return-value]

    def summary(self, variable: str, where: Where = None, by: Optional[str] = None, *, by_site: bool = False,
                rho: Optional[float] = None,
                timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT) -> Union[SummaryResult, SummaryByResult]:
        """n, mean, 95% interval, variance and sd of a numeric variable.

        ``by`` names a categorical or boolean variable: the client then runs
        one query per level of it from the data dictionary, adding
        ``by == "level"`` to ``where`` (as text when ``where`` is text, else
        as a cohort tree), and returns a
        :class:`~plexus.SummaryByResult`. Each of those queries is charged
        on its own in a private study.
        """
        if by is None:
            return self._run({"summary": {"variable": variable}}, where, by_site, rho,  # type: ignore[return-value]
                             timeout)
        var = self.network._variable(by)
        if var.get("type") == "boolean":
            levels: List[Any] = [False, True]
        elif var.get("levels"):
            levels = list(var["levels"])
        else:
            from .errors import InvalidQuery  # noqa: PLC0415

            raise InvalidQuery("invalid", f"summary(by={by!r}) needs a categorical or boolean variable; "
                                          f"{by!r} is {var.get('type')}")
        results: Dict[str, SummaryResult] = {}
        for level in levels:
            label = ("TRUE" if level else "FALSE") if isinstance(level, bool) else str(level)
            results[label] = self._run({"summary": {"variable": variable}},  # type: ignore[assignment]
                                       and_where(where, by, level), by_site, rho, timeout)
        return SummaryByResult(by, results)

    def table(self, row: str, column: str, where: Where = None, *, by_site: bool = False, rho: Optional[float] = None,
              timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT) -> TableResult:
        """A two-way contingency table of two categorical or boolean variables."""
        return self._run({"table": {"row": row, "column": column}}, where, by_site, rho,  # type: ignore[return-value]
                         timeout)

    def histogram(self, variable: str, edges: Sequence[float], where: Where = None, *, by_site: bool = False,
                  rho: Optional[float] = None, timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT) -> HistogramResult:
        """Counts of a numeric variable per bin ``[edges[i], edges[i+1])`` (the last closed), plus below and above."""
        return self._run({"histogram": {"variable": variable, "edges": list(edges)}},  # type: ignore[return-value]
                         where, by_site, rho, timeout)

    def glm(self, formula: str, family: str = "gaussian", where: Where = None, *, by_site: bool = False,
            rho: Optional[float] = None, timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT,
            **options: Any) -> GlmResult:
        """A generalised linear model, ``formula`` in R's syntax (``"death ~ age + smoking"``).

        ``family`` is ``gaussian``, ``binomial`` or ``poisson``; ``- 1`` in
        the formula drops the intercept. ``options`` go into the analysis as
        is (``tolerance``, ``max_iterations``).
        """
        spec = {"formula": formula, "family": family, **options}
        return self._run({"glm": spec}, where, by_site, rho, timeout)  # type: ignore[return-value]

    def cox(self, formula: str, where: Where = None, ties: Optional[str] = None, *, by_site: bool = False,
            rho: Optional[float] = None, timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT,
            **options: Any) -> CoxResult:
        """A Cox model stratified by site: ``"Surv(followup_days, death) ~ age + smoking"``.

        ``ties`` is ``"efron"`` (the server's default) or ``"breslow"``.
        """
        spec: Dict[str, Any] = {"formula": formula, **options}
        if ties is not None:
            spec["ties"] = ties
        return self._run({"cox": spec}, where, by_site, rho, timeout)  # type: ignore[return-value]

    def km(self, formula: str, grid: Grid = (0, 1826, 30), where: Where = None, *, by_site: bool = False,
           rho: Optional[float] = None, timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT) -> KmResult:
        """Kaplan-Meier curves: ``"Surv(followup_days, death) ~ smoking"`` (``~ 1`` for one curve).

        ``grid`` is ``(from, to, step)`` or an explicit increasing list of
        points; interval j is ``(g_j, g_j+1]``.
        """
        spec = {"formula": formula, "grid": _grid(grid)}
        return self._run({"kaplan_meier": spec}, where, by_site, rho, timeout)  # type: ignore[return-value]

    def analysis(self, analysis: Mapping[str, Any], where: Where = None, *, by_site: bool = False,
                 rho: Optional[float] = None, timeout: Optional[float] = DEFAULT_QUERY_TIMEOUT) -> Result:
        """Any analysis object as in the query format (``{"two_by_two": {...}}``, ``{"quantiles": {...}}`` ...)."""
        return self._run(analysis, where, by_site, rho, timeout)

    def budget(self) -> Budget:
        """The study's privacy budget: spent, remaining, per node."""
        return Budget.from_json(self.network.request("GET", f"/v1/studies/{self.id}/budget"))
