"""Results: the coordinator's result JSON with tidy views.

A result is what ``plexus query --output json`` prints: ``value`` (one of the
kinds of docs/src/reference/results.md), ``provenance`` (which nodes answered),
``privacy`` (what it cost) and, with ``by_site``, each site's own value.
Each class keeps that JSON as :attr:`Result.raw` and adds views in the
shape R's broom and Python's statsmodels/lifelines users expect:
``tidy()`` (one row per term, bin, cell or time), ``glance()`` (one row
for the whole fit) and ``plot()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Type

from ._pandas import pd

__all__ = [
    "Provenance",
    "Result",
    "CountResult",
    "SummaryResult",
    "SummaryByResult",
    "TableResult",
    "HistogramResult",
    "GlmResult",
    "CoxResult",
    "KmResult",
    "PerformanceResult",
    "result_from_json",
]

TIDY_COLUMNS = ["term", "estimate", "std_error", "statistic", "p_value", "conf_low", "conf_high"]
KM_COLUMNS = ["time", "n_risk", "n_event", "n_censor", "estimate", "std_error", "conf_low", "conf_high", "strata"]


def _opt_float(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _cell_count(cell: Optional[Mapping[str, Any]]) -> Optional[int]:
    if not cell or cell.get("count") is None:
        return None
    return int(cell["count"])


def _cell_row(cell: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    cell = cell or {}
    return {
        "count": _cell_count(cell),
        "at_least": cell.get("at_least"),
        "suppressed": cell.get("count") is None,
        "suppressed_at": ",".join(cell.get("suppressed_at", [])),
    }


@dataclass
class Provenance:
    """How a result came about: which nodes answered, under which rules, at what privacy cost."""

    #: Every node of the study with its ``status`` (answered, suppressed, missing, refused, failed) and ``detail``.
    nodes: List[Dict[str, Any]]
    #: How many nodes returned statistics.
    answered: int
    #: The study's quorum.
    min_nodes: int
    #: The minimum cell size the pooled result was checked against.
    min_cell_size: int
    #: What else the researcher should know (a node lost during a fit, say).
    notes: List[str] = field(default_factory=list)
    #: Wall time of each round of an iterative fit, in milliseconds.
    round_ms: List[int] = field(default_factory=list)
    #: The result's ``privacy`` object (``exact``, ``cost_rho``, ``charged_rho``, ``remaining_rho`` ...), if any.
    privacy: Optional[Dict[str, Any]] = None
    #: The query's id and hash, when the result came through :class:`~plexus.QueryHandle`.
    query_id: Optional[str] = None
    query_hash: Optional[str] = None

    @classmethod
    def from_json(cls, result: Mapping[str, Any], envelope: Optional[Mapping[str, Any]] = None) -> "Provenance":
        """Reads a result's ``provenance`` and ``privacy`` (and the query envelope's id and hash)."""
        p = result.get("provenance") or {}
        envelope = envelope or {}
        return cls(
            nodes=list(p.get("nodes", [])),
            answered=int(p.get("answered", 0)),
            min_nodes=int(p.get("min_nodes", 0)),
            min_cell_size=int(p.get("min_cell_size", 0)),
            notes=list(p.get("notes", [])),
            round_ms=list(p.get("round_ms", [])),
            privacy=result.get("privacy"),
            query_id=envelope.get("query_id"),
            query_hash=envelope.get("query_hash"),
        )

    def nodes_frame(self) -> pd.DataFrame:
        """One row per node: node, status, detail, code."""
        return pd.DataFrame(
            [{"node": n.get("node"), "status": n.get("status"), "detail": n.get("detail"), "code": n.get("code")}
             for n in self.nodes],
            columns=["node", "status", "detail", "code"],
        )

    def glance(self) -> Dict[str, Any]:
        """The provenance's one-row facts: nodes answered, quorum, k, privacy cost and remaining budget."""
        privacy = self.privacy or {}
        exact = bool(privacy.get("exact", False)) if privacy else None
        return {
            "nodes_answered": self.answered,
            "nodes": len(self.nodes),
            "min_nodes": self.min_nodes,
            "min_cell_size": self.min_cell_size,
            "exact": exact,
            "privacy_cost_rho": privacy.get("charged_rho"),
            "privacy_requested_rho": privacy.get("cost_rho"),
            "privacy_remaining_rho": privacy.get("remaining_rho"),
            "epsilon_spent": privacy.get("epsilon_spent"),
            "cached": privacy.get("cached", False) if privacy else None,
        }


class Result:
    """A query's result: ``raw`` JSON, ``provenance``, and tidy views.

    Subclasses exist per analysis kind; this base class serves the kinds
    without one (correlation, quantiles, two_by_two): ``tidy()`` then gives
    the value's scalar fields as one row.
    """

    kind: str = ""

    def __init__(self, raw: Mapping[str, Any], envelope: Optional[Mapping[str, Any]] = None) -> None:
        #: The result JSON exactly as the coordinator returned it (``value``, ``provenance``, ``privacy``, ``by_site``).
        self.raw: Dict[str, Any] = dict(raw)
        #: The QueryResult around it (query_id, query_hash, times), when it came over HTTP.
        self.envelope: Dict[str, Any] = dict(envelope or {})
        #: The pooled value: ``raw["value"]``.
        self.value: Dict[str, Any] = dict(raw.get("value") or {})
        #: Nodes, quorum, privacy cost: see :class:`Provenance`.
        self.provenance: Provenance = Provenance.from_json(raw, envelope)
        self.kind = str(self.value.get("kind", ""))

    @property
    def query_id(self) -> Optional[str]:
        """The coordinator's id of the query that produced this result."""
        return self.envelope.get("query_id")

    @property
    def by_site(self) -> Dict[str, "Result"]:
        """Each site's own answer (queries with ``by_site=True``), keyed by node; a site without one is left out."""
        out: Dict[str, Result] = {}
        for site in self.raw.get("by_site", []) or []:
            if site.get("value") is not None:
                out[site["node"]] = result_from_json({"value": site["value"], "provenance": self.raw.get("provenance", {})})
        return out

    @property
    def by_site_errors(self) -> Dict[str, str]:
        """Why a site has no answer of its own, keyed by node."""
        return {s["node"]: s["error"] for s in self.raw.get("by_site", []) or [] if s.get("error")}

    def tidy(self, **_: Any) -> pd.DataFrame:
        """The value's scalar fields as one row (kinds without a dedicated class)."""
        row = {k: v for k, v in self.value.items() if not isinstance(v, (list, dict))}
        return pd.DataFrame([row])

    def _glance_fields(self) -> Dict[str, Any]:
        return {}

    def glance(self) -> pd.DataFrame:
        """One row: the fit's or count's own figures, then nodes answered and privacy cost/remaining budget."""
        row = self._glance_fields()
        row.update(self.provenance.glance())
        return pd.DataFrame([row])

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Draws the result with matplotlib (install ``plexus-client[plot]``)."""
        raise NotImplementedError(f"no plot for a {self.kind or 'generic'} result")

    def _repr_header(self) -> str:
        p = self.provenance
        privacy = p.privacy or {}
        cost = "exact" if privacy.get("exact") else (
            f"rho charged {privacy.get('charged_rho')}, remaining {privacy.get('remaining_rho')}" if privacy else "")
        return f"{p.answered}/{len(p.nodes)} nodes answered, k = {p.min_cell_size}" + (f", {cost}" if cost else "")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}: {self._repr_header()}>"


def _ax(ax: Any) -> Any:
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot() needs matplotlib: pip install 'plexus-client[plot]'") from e
    _, ax = plt.subplots()
    return ax


class CountResult(Result):
    """A count: :attr:`n` is the pooled number, ``None`` when suppressed (then :attr:`at_least` may say more)."""

    kind = "count"

    @property
    def cell(self) -> Dict[str, Any]:
        """The pooled cell: ``count``, or ``suppressed_at``/``at_least`` when suppressed."""
        return dict(self.value.get("n") or {})

    @property
    def n(self) -> Optional[int]:
        """The count, or ``None`` when disclosure control suppressed it."""
        return _cell_count(self.value.get("n"))

    @property
    def suppressed(self) -> bool:
        """Whether the count was withheld (a part or the total under the minimum cell size)."""
        return self.n is None

    @property
    def at_least(self) -> Optional[int]:
        """For a suppressed count, the sum of the parts that were released (when above 0)."""
        return self.cell.get("at_least")

    def tidy(self, **_: Any) -> pd.DataFrame:
        """One row: count, at_least, suppressed, suppressed_at."""
        return pd.DataFrame([_cell_row(self.value.get("n"))])

    def _glance_fields(self) -> Dict[str, Any]:
        return {"n": self.n, "suppressed": self.suppressed}

    def __int__(self) -> int:
        if self.n is None:
            raise ValueError("the count was suppressed by disclosure control")
        return self.n

    def __repr__(self) -> str:
        shown: Any = self.n
        if self.n is None:
            shown = f"suppressed (at least {self.at_least})" if self.at_least else "suppressed"
        return f"<CountResult n={shown}: {self._repr_header()}>"


class SummaryResult(Result):
    """A numeric variable's n, mean, 95% interval, variance and sd."""

    kind = "summary"

    def tidy(self, **_: Any) -> pd.DataFrame:
        """One row: variable, n, mean, sd, variance, conf_low, conf_high, noise_sd."""
        v = self.value
        ci = v.get("ci") or [None, None]
        return pd.DataFrame([{
            "variable": v.get("variable"), "n": v.get("n"), "mean": v.get("mean"), "sd": v.get("sd"),
            "variance": v.get("variance"), "conf_low": ci[0], "conf_high": ci[1], "noise_sd": v.get("noise_sd"),
        }])

    def _glance_fields(self) -> Dict[str, Any]:
        return {"n": self.value.get("n")}

    def __repr__(self) -> str:
        v = self.value
        return (f"<SummaryResult {v.get('variable')}: n={v.get('n')} mean={v.get('mean')} sd={v.get('sd')}; "
                f"{self._repr_header()}>")


class SummaryByResult:
    """Summaries of one variable per level of another: one query per level.

    ``tidy()`` stacks the per-level rows with the grouping variable as the
    first column; ``results[level]`` is each level's :class:`SummaryResult`.
    """

    def __init__(self, by: str, results: Mapping[str, SummaryResult]) -> None:
        self.by: str = by
        self.results: Dict[str, SummaryResult] = dict(results)

    def __getitem__(self, level: str) -> SummaryResult:
        return self.results[level]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def tidy(self, **_: Any) -> pd.DataFrame:
        """One row per level: the level, then the columns of :meth:`SummaryResult.tidy`."""
        frames = []
        for level, r in self.results.items():
            f = r.tidy()
            f.insert(0, self.by, level)
            frames.append(f)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[self.by])

    def __repr__(self) -> str:
        return f"<SummaryByResult by {self.by}: {len(self.results)} levels>\n{self.tidy().to_string(index=False)}"


class TableResult(Result):
    """A two-way contingency table: ``cells[r][c]`` over the dictionary's levels."""

    kind = "table"

    def tidy(self, **_: Any) -> pd.DataFrame:
        """Long form: one row per cell with the row level, column level, count, at_least, suppressed."""
        v = self.value
        rows = []
        for i, rl in enumerate(v.get("row_levels", [])):
            for j, cl in enumerate(v.get("column_levels", [])):
                rows.append({v.get("row", "row"): rl, v.get("column", "column"): cl, **_cell_row(v["cells"][i][j])})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """The table as a wide DataFrame (rows by columns, counts; suppressed cells are missing)."""
        v = self.value
        data = [[_cell_count(c) for c in row] for row in v.get("cells", [])]
        frame = pd.DataFrame(data, index=v.get("row_levels"), columns=v.get("column_levels"), dtype="Int64")
        frame.index.name, frame.columns.name = v.get("row"), v.get("column")
        return frame

    def __repr__(self) -> str:
        return f"<TableResult {self.value.get('row')} x {self.value.get('column')}: {self._repr_header()}>\n{self.to_frame()}"


class HistogramResult(Result):
    """Counts per bin ``[edges[i], edges[i+1])`` (the last closed), plus below and above."""

    kind = "histogram"

    def tidy(self, **_: Any) -> pd.DataFrame:
        """One row per bin: bin_lower, bin_upper, count, at_least, suppressed, suppressed_at."""
        edges = self.value.get("edges", [])
        rows = [{"bin_lower": edges[i], "bin_upper": edges[i + 1], **_cell_row(c)}
                for i, c in enumerate(self.value.get("bins", []))]
        return pd.DataFrame(rows)

    @property
    def below(self) -> Optional[int]:
        """Patients under the first edge (``None`` when suppressed)."""
        return _cell_count(self.value.get("below"))

    @property
    def above(self) -> Optional[int]:
        """Patients over the last edge (``None`` when suppressed)."""
        return _cell_count(self.value.get("above"))

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Bars per bin; a suppressed bin is drawn as an empty outline at 0."""
        ax = _ax(ax)
        t = self.tidy()
        widths = t["bin_upper"] - t["bin_lower"]
        heights = t["count"].fillna(0)
        ax.bar(t["bin_lower"], heights, width=widths, align="edge", edgecolor="black", **kwargs)
        ax.set_xlabel(str(self.value.get("variable")))
        ax.set_ylabel("patients")
        return ax


class _Regression(Result):
    """Shared by GLM and Cox: the coefficient table."""

    def _critical(self, conf_level: float) -> float:
        return NormalDist().inv_cdf(0.5 + conf_level / 2)

    def tidy(self, exponentiate: bool = False, conf_level: Optional[float] = None, **_: Any) -> pd.DataFrame:
        """One row per term: term, estimate, std_error, statistic, p_value, conf_low, conf_high.

        ``exponentiate=True`` gives odds, rate or hazard ratios and their
        interval: the server's ``ratio`` where it sent one, else exp() of
        the estimate and bounds (``std_error`` stays on the model's scale,
        as in broom). ``conf_level`` other than 0.95 recomputes the interval
        from estimate and standard error (a t interval for a gaussian fit
        needs scipy).
        """
        level = 0.95 if conf_level is None else float(conf_level)
        recompute = not math.isclose(level, 0.95)
        q = self._critical(level) if recompute else None
        rows = []
        for c in self.value.get("coefficients", []):
            est, se = float(c["estimate"]), float(c["std_error"])
            lo, hi = (est - q * se, est + q * se) if q is not None else (c.get("ci_lower"), c.get("ci_upper"))
            lo, hi = _opt_float(lo), _opt_float(hi)
            if exponentiate:
                ratio = c.get("ratio")
                if ratio and not recompute:
                    est, lo, hi = float(ratio["estimate"]), _opt_float(ratio["ci_lower"]), _opt_float(ratio["ci_upper"])
                else:
                    est, lo, hi = math.exp(est), math.exp(lo), math.exp(hi)
            rows.append({"term": c["term"], "estimate": est, "std_error": se, "statistic": _opt_float(c.get("statistic")),
                         "p_value": _opt_float(c.get("p_value")), "conf_low": lo, "conf_high": hi})
        return pd.DataFrame(rows, columns=TIDY_COLUMNS)

    @property
    def params(self) -> pd.Series:
        """Estimates by term (as statsmodels' ``params``)."""
        t = self.tidy()
        return pd.Series(t["estimate"].values, index=t["term"], name="estimate")

    @property
    def bse(self) -> pd.Series:
        """Standard errors by term (as statsmodels' ``bse``)."""
        t = self.tidy()
        return pd.Series(t["std_error"].values, index=t["term"], name="std_error")


class GlmResult(_Regression):
    """A generalised linear model fitted by federated IRLS (gaussian, binomial or poisson)."""

    kind = "glm"

    def _critical(self, conf_level: float) -> float:
        if self.value.get("statistic") == "t":
            try:
                from scipy.stats import t as student_t
            except ImportError as e:
                raise ImportError("a t interval at a level other than 0.95 needs scipy") from e
            return float(student_t.ppf(0.5 + conf_level / 2, self.value["df_residual"]))
        return super()._critical(conf_level)

    def _glance_fields(self) -> Dict[str, Any]:
        v = self.value
        return {
            "family": v.get("family"), "link": v.get("link"), "nobs": v.get("n"), "deviance": v.get("deviance"),
            "null_deviance": v.get("null_deviance"), "df_residual": v.get("df_residual"), "df_null": v.get("df_null"),
            "dispersion": v.get("dispersion"), "iterations": v.get("iterations"), "converged": v.get("converged"),
        }

    def summary(self) -> str:
        """A text table in the manner of statsmodels' ``GLM.fit().summary()``."""
        v = self.value
        stat = v.get("statistic", "z")
        lines = [
            "Plexus federated GLM",
            "=" * 78,
            f"Dep. variable: {v.get('outcome')!s:<20} No. observations: {v.get('n')}",
            f"Family: {v.get('family')!s:<27} Df residuals: {v.get('df_residual')}",
            f"Link: {v.get('link')!s:<29} Dispersion: {v.get('dispersion'):.6g}",
            f"Deviance: {v.get('deviance'):<25.6g} Null deviance: {_fmt(v.get('null_deviance'))}",
            f"Iterations: {v.get('iterations')!s:<23} Converged: {v.get('converged')}",
            f"Nodes: {self._repr_header()}",
            "=" * 78,
            f"{'':<22}{'coef':>10}{'std err':>11}{stat:>9}{'P>|' + stat + '|':>9}{'[0.025':>9}{'0.975]':>9}",
            "-" * 78,
        ]
        for _, r in self.tidy().iterrows():
            lines.append(f"{str(r.term)[:21]:<22}{r.estimate:>10.4f}{r.std_error:>11.4f}{r.statistic:>9.3f}"
                         f"{r.p_value:>9.3f}{r.conf_low:>9.3f}{r.conf_high:>9.3f}")
        lines.append("=" * 78)
        if v.get("missing"):
            lines.append(f"Missing values: {v.get('missing')}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


class CoxResult(_Regression):
    """A Cox proportional hazards model stratified by site, by federated Newton-Raphson."""

    kind = "cox"

    def _glance_fields(self) -> Dict[str, Any]:
        v = self.value
        lr = v.get("likelihood_ratio") or {}
        return {
            "nobs": v.get("n"), "events": v.get("events"), "ties": v.get("ties"), "strata": v.get("strata"),
            "loglik": v.get("loglik"), "loglik_null": v.get("loglik_null"), "lr_chi_square": lr.get("chi_square"),
            "lr_df": lr.get("df"), "lr_p_value": lr.get("p_value"), "iterations": v.get("iterations"),
            "converged": v.get("converged"),
        }

    def summary(self) -> str:
        """Hazard ratios with intervals, in the manner of R's ``summary(coxph)``."""
        v = self.value
        t = self.tidy(exponentiate=True)
        lr = v.get("likelihood_ratio") or {}
        head = (f"Plexus federated Cox model: Surv({v.get('time')}, {v.get('event')}), strata {v.get('strata')}, "
                f"ties {v.get('ties')}\n  n = {v.get('n')}, events = {v.get('events')}; {self._repr_header()}\n")
        body = t.rename(columns={"estimate": "hazard_ratio"}).to_string(index=False)
        tail = (f"\nLikelihood ratio test = {_fmt(lr.get('chi_square'))} on {lr.get('df')} df, "
                f"p = {_fmt(lr.get('p_value'))}")
        return head + body + tail

    def __repr__(self) -> str:
        return self.summary()


class KmResult(Result):
    """Kaplan-Meier curves on a public grid with Greenwood intervals and a log-rank test."""

    kind = "kaplan_meier"

    @property
    def curves(self) -> List[Dict[str, Any]]:
        """The curves as the server sent them."""
        return list(self.value.get("curves", []))

    def tidy(self, **_: Any) -> pd.DataFrame:
        """One row per curve and grid time, like broom's ``tidy(survfit)``.

        Columns: time (right end of each interval), n_risk, n_event,
        n_censor, estimate (survival), std_error (Greenwood, of the
        survival), conf_low, conf_high, strata (the group's level, or
        ``all``). Values not stated (after the last patient at risk, or in
        a merged tail) are NaN.
        """
        frames = []
        for c in self.curves:
            n = len(c.get("times", []))
            frames.append(pd.DataFrame({
                "time": c.get("times", []),
                "n_risk": c.get("n_risk", [None] * n),
                "n_event": c.get("n_event", [None] * n),
                "n_censor": c.get("n_censor", [None] * n),
                "estimate": [_opt_float(x) for x in c.get("survival", [None] * n)],
                "std_error": [_opt_float(x) for x in c.get("std_error", [None] * n)],
                "conf_low": [_opt_float(x) for x in c.get("lower", [None] * n)],
                "conf_high": [_opt_float(x) for x in c.get("upper", [None] * n)],
                "strata": c.get("group"),
            }, columns=KM_COLUMNS))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=KM_COLUMNS)

    def survival_at(self, times: Sequence[float], group: Optional[str] = None) -> pd.Series:
        """Survival at the given grid times for one curve (the only one when ``group`` is None)."""
        t = self.tidy()
        if group is not None:
            t = t[t["strata"] == group]
        elif t["strata"].nunique() > 1:
            raise ValueError("name the group: this result has several curves")
        s = pd.Series(t["estimate"].values, index=t["time"].values)
        return s.reindex(list(times))

    def medians(self) -> Dict[str, Optional[float]]:
        """Median survival per group (``None`` where not reached where survival is stated)."""
        return {str(c.get("group")): c.get("median") for c in self.curves}

    def _glance_fields(self) -> Dict[str, Any]:
        lr = self.value.get("log_rank") or {}
        return {
            "curves": len(self.curves), "n": sum(int(c.get("at_risk", 0)) for c in self.curves),
            "events": sum(int(c.get("events", 0)) for c in self.curves), "grid_intervals": self.value.get("grid_intervals"),
            "log_rank_chi_square": lr.get("chi_square"), "log_rank_df": lr.get("df"), "log_rank_p_value": lr.get("p_value"),
        }

    def plot(self, ax: Any = None, ci: bool = True, **kwargs: Any) -> Any:
        """Step plot of each curve from 1 at the grid's start, with its 95% band; each curve ends where survival is stated."""
        ax = _ax(ax)
        start = float(self.value.get("start", 0.0))
        for c in self.curves:
            times = [start] + [float(t) for t in c.get("times", [])]
            surv = [1.0] + [_opt_float(s) for s in c.get("survival", [])]
            lower = [1.0] + [_opt_float(s) for s in c.get("lower", [])]
            upper = [1.0] + [_opt_float(s) for s in c.get("upper", [])]
            keep = [i for i, s in enumerate(surv) if not math.isnan(s)]
            times, surv = [times[i] for i in keep], [surv[i] for i in keep]
            lower, upper = [lower[i] for i in keep], [upper[i] for i in keep]
            (line,) = ax.step(times, surv, where="post", label=str(c.get("group")), **kwargs)
            if ci:
                ax.fill_between(times, lower, upper, step="post", alpha=0.2, color=line.get_color())
        ax.set_xlabel(str(self.value.get("time")))
        ax.set_ylabel("survival")
        ax.set_ylim(0, 1.02)
        if self.value.get("group"):
            ax.legend(title=str(self.value.get("group")))
        return ax

    def __repr__(self) -> str:
        meds = ", ".join(f"{g}: {m}" for g, m in self.medians().items())
        lr = self.value.get("log_rank")
        test = f"; log-rank chi2 {lr['chi_square']:.4g} on {lr['df']} df, p {lr['p_value']:.4g}" if lr else ""
        return f"<KmResult {len(self.curves)} curves, medians {{{meds}}}{test}; {self._repr_header()}>"


def _fmt(x: Any) -> str:
    return "NA" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)


class GbdtResult(Result):
    """Gradient-boosted trees trained across the sites.

    ``tidy()`` gives each feature's splits and gain; :attr:`model` is the
    trained ensemble as Plexus returns it (save it with :meth:`save_model`,
    or as ONNX with ``plexus query --save-model model.onnx``);
    :meth:`predict` scores rows of feature values with it.
    """

    kind = "gbdt"

    @property
    def model(self) -> Dict[str, Any]:
        """The ensemble: ``loss``, ``base_score``, ``learning_rate``, ``features``, ``trees``."""
        return dict(self.value.get("model") or {})

    @property
    def feature_names(self) -> List[str]:
        """The model's features in its input order (``smoking=current`` for a level's indicator)."""
        return [f["name"] for f in self.model.get("features", [])]

    def tidy(self, **_: Any) -> pd.DataFrame:
        """One row per feature that splits: feature, splits, gain, share of the total gain."""
        rows = [dict(i) for i in self.value.get("importance", [])]
        total = sum(r["gain"] for r in rows) or 1.0
        for r in rows:
            r["share"] = r["gain"] / total
        return pd.DataFrame(rows, columns=["feature", "splits", "gain", "share"])

    def _glance_fields(self) -> Dict[str, Any]:
        training = self.value.get("training_loss") or []
        validation = self.value.get("validation_loss") or []
        return {
            "n": self.value.get("n"),
            "trees": len(self.model.get("trees", [])),
            "loss": self.model.get("loss"),
            "rounds": self.value.get("rounds"),
            "training_loss": training[-1] if training else None,
            "validation_n": self.value.get("validation_n"),
            "validation_loss": min(validation) if validation else None,
            "stopped": self.value.get("stopped"),
        }

    def score(self, rows: Sequence[Sequence[float]]) -> List[float]:
        """Each row's score: the base score plus its leaf in every tree (rows hold the features in :attr:`feature_names` order: numbers as they are, indicators 0 or 1)."""
        model = self.model
        features = model["features"]
        out = []
        for row in rows:
            if len(row) != len(features):
                raise ValueError(f"a row has {len(row)} values for {len(features)} features ({', '.join(self.feature_names)})")
            bins = [sum(1 for t in f["thresholds"] if t <= v) for f, v in zip(features, row)]
            total = model["base_score"]
            for tree in model["trees"]:
                slots = tree["slots"]
                s = 0
                while isinstance(slots[s], dict) and "split" in slots[s]:
                    split = slots[s]["split"]
                    s = 2 * s + 1 if bins[split["feature"]] <= split["threshold"] else 2 * s + 2
                if isinstance(slots[s], dict) and "leaf" in slots[s]:
                    total += slots[s]["leaf"]["value"]
            out.append(total)
        return out

    def predict(self, rows: Sequence[Sequence[float]]) -> List[float]:
        """Each row's prediction: a probability for a logistic loss, the outcome's value for a squared one."""
        scores = self.score(rows)
        if self.model.get("loss") == "logistic":
            return [1.0 / (1.0 + math.exp(-s)) if s >= 0 else math.exp(s) / (1.0 + math.exp(s)) for s in scores]
        return scores

    def save_model(self, path: str) -> None:
        """Writes the model's JSON to ``path``."""
        import json

        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.model, f, indent=2)

    def __repr__(self) -> str:
        g = self._glance_fields()
        return f"<GbdtResult {g['trees']} trees ({g['loss']}), n={g['n']}: {self._repr_header()}>"


PERFORMANCE_COLUMNS = [
    "group", "n", "events", "prevalence", "auc", "auc_low", "auc_high", "auc_error_bound", "brier",
    "brier_error_bound",
    "calibration_in_the_large", "calibration_in_the_large_low", "calibration_in_the_large_high",
    "calibration_slope", "calibration_slope_low", "calibration_slope_high",
    "calibration_intercept", "calibration_intercept_low", "calibration_intercept_high",
    "observed_expected", "converged",
]
THRESHOLD_COLUMNS = ["group", "requested", "threshold", "tp", "fp", "tn", "fn", "sensitivity", "specificity",
                     "ppv", "npv", "net_benefit", "treat_all"]
CALIBRATION_COLUMNS = ["group", "bin_lower", "bin_upper", "n", "observed", "predicted"]
ROC_COLUMNS = ["group", "threshold", "fpr", "tpr"]
FAIRNESS_COLUMNS = ["variable", "metric", "threshold", "gap", "lowest", "highest"]


def _group_label(g: Mapping[str, Any]) -> str:
    """``all`` for everyone, ``variable=level`` for a subgroup (as the server's ``Group::label``)."""
    if g.get("variable") is not None and g.get("level") is not None:
        return f"{g['variable']}={g['level']}"
    return "all"


def _estimate(e: Optional[Mapping[str, Any]]) -> List[float]:
    """An estimate object as [estimate, ci low, ci high], NaN where the server stated none."""
    if not e:
        return [float("nan")] * 3
    ci = e.get("ci") or [None, None]
    return [_opt_float(e.get("estimate")), _opt_float(ci[0]), _opt_float(ci[1])]


class PerformanceResult(Result):
    """A registered prediction model validated across the sites (``model_performance``).

    Every metric is given per group: everyone (``all``), then every level
    of every subgroup variable (``sex=F``). ``tidy()`` gives discrimination
    and calibration per group; :meth:`thresholds`, :meth:`calibration`,
    :meth:`roc` and :meth:`fairness` the rest as long tables; ``plot()``
    draws ROC, calibration and decision curves.
    """

    kind = "model_performance"

    @property
    def groups(self) -> List[Dict[str, Any]]:
        """The groups as the server sent them, everyone first."""
        return list(self.value.get("groups", []))

    @property
    def overall(self) -> Dict[str, Any]:
        """The group of everyone (``all``)."""
        for g in self.groups:
            if _group_label(g) == "all":
                return dict(g)
        return {}

    def tidy(self, **_: Any) -> pd.DataFrame:
        """One row per group: group, n, events, prevalence, AUC with its 95% interval and error bound, Brier
        score, calibration in the large, slope and intercept with their intervals, observed/expected,
        converged. Metrics the server did not state (a group without patients of both kinds) are NaN."""
        rows = []
        for g in self.groups:
            auc = _estimate(g.get("auc"))
            citl = _estimate(g.get("calibration_in_the_large"))
            slope = _estimate(g.get("calibration_slope"))
            intercept = _estimate(g.get("calibration_intercept"))
            rows.append([
                _group_label(g), g.get("n"), g.get("positives"), _opt_float(g.get("prevalence")),
                *auc, _opt_float(g.get("auc_error_bound")), _opt_float(g.get("brier")),
                _opt_float(g.get("brier_error_bound")),
                *citl, *slope, *intercept, _opt_float(g.get("observed_expected")), g.get("converged"),
            ])
        return pd.DataFrame(rows, columns=PERFORMANCE_COLUMNS)

    def thresholds(self) -> pd.DataFrame:
        """One row per group and threshold: the threshold asked for and the one used (the nearest released
        segment end), tp, fp, tn, fn, sensitivity, specificity, ppv, npv (NaN where undefined), net_benefit
        and treat_all (the net benefit of treating everyone)."""
        rows = []
        for g in self.groups:
            for t in g.get("thresholds", []):
                rows.append([
                    _group_label(g), t.get("requested"), t.get("threshold"), t.get("tp"), t.get("fp"), t.get("tn"),
                    t.get("fn"), _opt_float(t.get("sensitivity")), _opt_float(t.get("specificity")),
                    _opt_float(t.get("ppv")), _opt_float(t.get("npv")), _opt_float(t.get("net_benefit")),
                    _opt_float(t.get("treat_all")),
                ])
        return pd.DataFrame(rows, columns=THRESHOLD_COLUMNS)

    def calibration(self) -> pd.DataFrame:
        """One row per group and bin of predicted risk: bin_lower, bin_upper, n, observed and mean predicted risk."""
        rows = [[_group_label(g), b.get("lower"), b.get("upper"), b.get("n"), _opt_float(b.get("observed")),
                 _opt_float(b.get("predicted"))]
                for g in self.groups for b in g.get("calibration", [])]
        return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)

    def roc(self) -> pd.DataFrame:
        """One row per group and point of the ROC curve: threshold (at or above it is called positive), fpr, tpr."""
        rows = [[_group_label(g), r.get("threshold"), r.get("fpr"), r.get("tpr")]
                for g in self.groups for r in g.get("roc", [])]
        return pd.DataFrame(rows, columns=ROC_COLUMNS)

    def fairness(self) -> pd.DataFrame:
        """One row per subgroup variable and metric (per threshold for the rates): the largest gap between its
        levels and the levels with the lowest and highest value; threshold is NaN for metrics without one."""
        rows = [[f.get("variable"), f.get("metric"), _opt_float(f.get("threshold")), _opt_float(f.get("gap")),
                 f.get("lowest"), f.get("highest")]
                for f in self.value.get("fairness", [])]
        return pd.DataFrame(rows, columns=FAIRNESS_COLUMNS)

    def _glance_fields(self) -> Dict[str, Any]:
        g = self.overall
        auc = (g.get("auc") or {}).get("estimate")
        return {
            "model": self.value.get("model"), "model_hash": self.value.get("model_hash"),
            "outcome": self.value.get("outcome"), "n": g.get("n"), "events": g.get("positives"),
            "auc": _opt_float(auc), "rounds": self.value.get("rounds"),
            "converged": all(bool(x.get("converged")) for x in self.groups),
        }

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Three panels as ``plexus query --plot`` draws them: ROC curves, calibration (observed against
        predicted risk per bin) and the decision curve (net benefit against the threshold used, with treat-all
        and treat-none), one series per group with patients of both kinds. ``ax`` is three axes to draw on
        (a new figure when ``None``); returns the figure."""
        groups = [g for g in self.groups if g.get("roc")]
        if not groups:
            raise ValueError("nothing to plot: no group has patients with and without the outcome")
        if ax is None:
            try:
                import matplotlib.pyplot as plt
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError("plot() needs matplotlib: pip install 'plexus-client[plot]'") from e
            fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        else:
            axes = list(ax)
            if len(axes) != 3:
                raise ValueError(f"plot() draws three panels (ROC, calibration, decision curve); got {len(axes)} axes")
            fig = axes[0].figure
        roc_ax, cal_ax, dca_ax = axes
        roc_ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
        for g in groups:
            auc = (g.get("auc") or {}).get("estimate")
            label = _group_label(g) + (f" (AUC {auc:.3f})" if auc is not None else "")
            roc_ax.plot([r["fpr"] for r in g["roc"]], [r["tpr"] for r in g["roc"]], label=label, **kwargs)
        roc_ax.set(title="ROC", xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1))
        roc_ax.legend(loc="lower right")
        top = max([0.05] + [max(b["observed"], b["predicted"]) for g in groups for b in g.get("calibration", [])])
        top = min(top * 1.05, 1.0)
        cal_ax.plot([0, top], [0, top], color="grey", linewidth=1)
        for g in groups:
            bins = g.get("calibration", [])
            cal_ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                        label=_group_label(g), **kwargs)
        cal_ax.set(title="Calibration", xlabel="predicted risk", ylabel="observed risk", xlim=(0, top), ylim=(0, top))
        cal_ax.legend(loc="lower right")
        overall = self.overall or groups[0]
        ts = overall.get("thresholds", [])
        every = [t for g in groups for t in g.get("thresholds", [])]
        x1 = max([0.01] + [t["threshold"] for t in every]) * 1.05
        dca_ax.plot([t["threshold"] for t in ts], [t["treat_all"] for t in ts], color="grey", linewidth=2,
                    label="treat all")
        dca_ax.plot([0, x1], [0, 0], color="black", linewidth=1, label="treat none")
        for g in groups:
            th = g.get("thresholds", [])
            dca_ax.plot([t["threshold"] for t in th], [t["net_benefit"] for t in th], marker="o",
                        label=_group_label(g), **kwargs)
        nb_top = max([0.01] + [max(t["net_benefit"], t["treat_all"]) for t in every])
        dca_ax.set(title="Decision curve", xlabel="threshold", ylabel="net benefit", xlim=(0, x1),
                   ylim=(-0.2 * nb_top, 1.1 * nb_top))
        dca_ax.legend(loc="upper right")
        return fig

    def __repr__(self) -> str:
        g = self._glance_fields()
        auc, lo, hi = _estimate(self.overall.get("auc"))
        shown = "AUC not stated" if math.isnan(auc) else f"AUC {auc:.3f} [{lo:.3f}, {hi:.3f}]"
        return (f"<PerformanceResult {g['model']} for {g['outcome']}: n={g['n']}, events={g['events']}, {shown}, "
                f"{len(self.groups)} groups; {self._repr_header()}>")


_CLASSES: Dict[str, Type[Result]] = {
    "count": CountResult,
    "summary": SummaryResult,
    "table": TableResult,
    "histogram": HistogramResult,
    "glm": GlmResult,
    "cox": CoxResult,
    "kaplan_meier": KmResult,
    "gbdt": GbdtResult,
    "model_performance": PerformanceResult,
}


def result_from_json(raw: Mapping[str, Any], envelope: Optional[Mapping[str, Any]] = None) -> Result:
    """The right :class:`Result` subclass for a result object (by ``value.kind``)."""
    kind = (raw.get("value") or {}).get("kind", "")
    return _CLASSES.get(kind, Result)(raw, envelope)
