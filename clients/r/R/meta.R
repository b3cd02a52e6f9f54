# Studies, dictionary, budget and audit log.

#' The studies you may query
#'
#' @param con A [px_connect()] connection.
#' @return A data frame, one row per study: `id`, `title`, `exact` (no
#'   noise, no budget), `min_nodes`, `nodes`, `analyses`, `variables`
#'   (comma-separated). The full study objects are in `attr(, "studies")`.
#' @export
px_studies <- function(con) {
  studies <- px_get(con, "/v1/studies")$studies
  collapse <- function(x) paste(unlist(x), collapse = ", ")
  out <- data.frame(
    id = chr(studies, "id"),
    title = chr(studies, "title"),
    exact = vapply(studies, function(s) isTRUE(s$privacy$exact), logical(1)),
    min_nodes = vapply(studies, function(s) as.numeric(s$min_nodes %||% NA), numeric(1)),
    nodes = vapply(studies, function(s) collapse(s$nodes), character(1)),
    analyses = vapply(studies, function(s) collapse(s$analyses), character(1)),
    variables = vapply(studies, function(s) collapse(s$variables), character(1)),
    stringsAsFactors = FALSE)
  attr(out, "studies") <- stats::setNames(studies, out$id)
  out
}

#' The network's data dictionary
#'
#' @inheritParams px_studies
#' @return A data frame: `name`, `type` (integer, float, categorical,
#'   boolean, date), `levels` (the categories, comma-separated; the first is
#'   a model's reference level), `unit`, `min`, `max` (public bounds, as
#'   text), `description`. The levels as vectors are in `attr(, "levels")`.
#' @export
px_dictionary <- function(con) {
  vars <- px_get(con, "/v1/dictionary")$variables
  levels <- lapply(vars, function(v) unlist(v$categories %||% v$levels))
  out <- data.frame(
    name = chr(vars, "name"),
    type = chr(vars, "type"),
    levels = vapply(levels, function(l) if (length(l)) paste(l, collapse = ", ") else NA_character_,
                    character(1)),
    unit = chr(vars, "unit"),
    min = chr(vars, "min"),
    max = chr(vars, "max"),
    description = chr(vars, "description"),
    stringsAsFactors = FALSE)
  attr(out, "levels") <- stats::setNames(levels, out$name)
  out
}

#' A study's privacy budget
#'
#' @inheritParams px_studies
#' @param study The study id.
#' @return A `px_budget` list: `exact`, `budget_rho`, `spent_rho`,
#'   `remaining_rho`, `epsilon_spent`, `epsilon_budget`, `delta`,
#'   `queries_charged`, and `nodes` (a data frame per node).
#' @export
px_budget <- function(con, study) {
  b <- px_get(con, paste0("/v1/studies/", path_segment(study), "/budget"))
  nodes <- b$nodes %||% list()
  b$nodes <- data.frame(
    node_id = chr(nodes, "node_id"),
    spent_rho = num(nodes, "spent_rho"),
    budget_rho = num(nodes, "budget_rho"),
    updated = ms_time(num(nodes, "updated_unix_ms")) %||% as.POSIXct(character(0), tz = "UTC"),
    stringsAsFactors = FALSE)
  structure(b, class = "px_budget")
}

#' @export
print.px_budget <- function(x, ...) {
  cat("Privacy budget of study", x$study_id, "\n")
  if (isTRUE(x$exact)) {
    cat("  exact study: answers are not noised and spend no budget\n")
  } else {
    cat(sprintf("  spent rho %s of %s, remaining %s (epsilon %s of %s at delta %s); %s queries charged\n",
                fmt(x$spent_rho), fmt(x$budget_rho), fmt(x$remaining_rho),
                fmt(x$epsilon_spent), fmt(x$epsilon_budget), fmt(x$delta),
                fmt(x$queries_charged)))
  }
  if (nrow(x$nodes)) print(x$nodes, row.names = FALSE)
  invisible(x)
}

#' The audit log (auditors)
#'
#' @inheritParams px_studies
#' @param study_id,who Keep events of this study / this certificate name.
#' @param since,until Time bounds: `POSIXct` or unix milliseconds.
#' @param limit At most this many events.
#' @return A data frame, one row per event, columns as the coordinator's
#'   `AuditEvent` (`seq`, `at` as POSIXct, `who`, `role`, `action`,
#'   `study_id`, `query_id`, `outcome`, `detail`, ...); list fields are
#'   comma-separated.
#' @export
px_audit_log <- function(con, study_id = NULL, who = NULL, since = NULL, until = NULL,
                         limit = NULL) {
  to_ms <- function(t) {
    if (is.null(t)) return(NULL)
    if (inherits(t, "POSIXt") || inherits(t, "Date")) return(round(as.numeric(as.POSIXct(t)) * 1000))
    t
  }
  events <- px_get(con, "/v1/audit/events", list(
    study_id = study_id, who = who, since_unix_ms = to_ms(since),
    until_unix_ms = to_ms(until), limit = limit))$events
  fields <- c("seq", "at_unix_ms", "who", "role", "action", "study_id", "query_id", "job_id",
              "node_id", "query_hash", "outcome", "detail", "purpose", "nodes", "result_size",
              "suppressed", "privacy_cost", "privacy_remaining")
  cols <- lapply(stats::setNames(fields, fields), function(f) {
    vapply(events, function(e) {
      v <- e[[f]]
      if (is.null(v) || length(v) == 0) NA_character_ else paste(unlist(v), collapse = ", ")
    }, character(1))
  })
  out <- as.data.frame(cols, stringsAsFactors = FALSE)
  for (f in c("seq", "at_unix_ms", "result_size", "privacy_cost", "privacy_remaining")) {
    out[[f]] <- suppressWarnings(as.numeric(out[[f]]))
  }
  out$suppressed <- as.logical(out$suppressed)
  out$at <- ms_time(out$at_unix_ms) %||% as.POSIXct(character(0), tz = "UTC")
  out[c("seq", "at", setdiff(fields, c("seq", "at_unix_ms")))]
}

chr <- function(xs, field) {
  vapply(xs, function(x) {
    v <- x[[field]]
    if (is.null(v)) NA_character_ else as.character(v)[1]
  }, character(1))
}

num <- function(xs, field) {
  vapply(xs, function(x) {
    v <- x[[field]]
    if (is.null(v)) NA_real_ else as.numeric(v)[1]
  }, numeric(1))
}

fmt <- function(x, digits = 4) {
  if (is.null(x) || length(x) == 0) return("NA")
  format(x, digits = digits)
}
