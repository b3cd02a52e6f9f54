#' plexus: federated statistics on a Plexus network
#'
#' Connect with [px_connect()], then ask pooled questions of a study:
#' [px_count()], [px_summary()], [px_table()], [px_glm()], [px_cox()],
#' [px_km()]; see the budget with [px_budget()] and, as an auditor, the
#' audit log with [px_audit_log()]. Failures are conditions of class
#' `plexus_<code>_error` (see [plexus-errors]).
#'
#' @keywords internal
"_PACKAGE"

#' @importFrom generics tidy glance
#' @importFrom stats coef confint nobs
#' @importFrom graphics plot
#' @export
generics::tidy

#' @export
generics::glance
