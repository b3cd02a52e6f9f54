# Building query requests, submitting them and waiting for results.

# The text of a cohort: a string as given, or a one-sided formula's right
# side (`~ age >= 65 & sex == "M"`) deparsed.
where_text <- function(where) {
  if (is.null(where)) return(NULL)
  if (inherits(where, "formula")) {
    if (length(where) != 2) {
      px_abort("invalid", "a cohort formula is one-sided: `~ age >= 65 & sex == \"M\"`")
    }
    return(deparse_text(where[[2]]))
  }
  if (is.character(where) && length(where) == 1 && !is.na(where)) return(where)
  px_abort("invalid", "`where` is a string such as \"age >= 65 & sex == 'M'\" or a one-sided formula")
}

# The formula's text; `survival::Surv` is written `Surv`, as the
# coordinator's syntax knows it.
formula_text <- function(formula) {
  if (inherits(formula, "formula")) formula <- deparse_text(formula)
  if (is.character(formula) && length(formula) == 1 && !is.na(formula)) {
    return(gsub("survival::Surv(", "Surv(", formula, fixed = TRUE))
  }
  px_abort("invalid", "`formula` is an R formula (`death ~ age + smoking`) or its text")
}

deparse_text <- function(x) {
  paste(trimws(deparse(x, width.cutoff = 500L)), collapse = " ")
}

family_name <- function(family) {
  if (is.function(family)) family <- family()
  if (inherits(family, "family")) {
    canonical <- c(gaussian = "identity", binomial = "logit", poisson = "log")
    if (!family$family %in% names(canonical)) {
      px_abort("invalid", sprintf("family \"%s\" is not available: gaussian, binomial or poisson", family$family))
    }
    if (!identical(family$link, canonical[[family$family]])) {
      px_abort("invalid", sprintf("the %s family takes its canonical link \"%s\" only, not \"%s\"",
                                  family$family, canonical[[family$family]], family$link))
    }
    return(family$family)
  }
  if (is.character(family) && length(family) == 1) return(family)
  px_abort("invalid", "`family` is \"gaussian\", \"binomial\", \"poisson\" or a family object such as binomial()")
}

# The QueryRequest body as JSON text: the cohort and formula as text, or
# with syntax = "tree" as the query tree (see tree.R).
query_body <- function(analysis, where = NULL, by_site = FALSE, rho = NULL, syntax = "text") {
  body <- list()
  where <- where_text(where)
  if (identical(syntax, "tree")) {
    tree <- to_tree(analysis, where)
    body$cohort <- tree$cohort
    body$analysis <- tree$analysis
  } else {
    body$where <- where
    body$analysis <- analysis
  }
  if (isTRUE(by_site)) body$by_site <- TRUE
  if (!is.null(rho)) body$rho <- rho
  as.character(jsonlite::toJSON(body, auto_unbox = TRUE, digits = NA, null = "null"))
}

# "text" or "tree" for the next query: as the connection says, or with
# "auto" text until the coordinator shows it does not read it.
query_syntax <- function(con) {
  syntax <- con$syntax %||% "text"
  if (identical(syntax, "auto")) syntax <- con$state$syntax %||% "text"
  syntax
}

empty_object <- function() structure(list(), names = character(0))

#' Submit any analysis
#'
#' The general form behind [px_count()], [px_glm()] and the others: any
#' analysis of the query format (docs/src/reference/query-format.md) as an R list, e.g.
#' `list(histogram = list(variable = "age", edges = c(40, 60, 80, 100)))`,
#' `list(two_by_two = list(exposure = "diabetes", outcome = "death"))`,
#' `list(quantiles = ...)` or `list(correlation = ...)`.
#'
#' @inheritParams px_count
#' @param analysis The analysis object as a named list (one element).
#' @param call Recorded in the result, for printing.
#' @return A result object: `px_count`, `px_glm`, ... by the result's kind,
#'   else a `px_result` whose `value` is the coordinator's JSON as lists.
#' @examples
#' \dontrun{
#' h <- px_query(con, "aaa-validation",
#'               list(histogram = list(variable = "age", edges = c(40, 60, 80, 100))))
#' h$value$bins
#' }
#' @export
px_query <- function(con, study, analysis, where = NULL, by_site = FALSE, rho = NULL,
                     timeout = NULL, call = NULL) {
  stopifnot(inherits(con, "px_connection"))
  if (!is.character(study) || length(study) != 1) {
    px_abort("invalid", "`study` is one study id, e.g. \"aaa-validation\"")
  }
  path <- paste0("/v1/studies/", path_segment(study), "/queries")
  syntax <- query_syntax(con)
  body <- query_body(analysis, where, by_site, rho, syntax = syntax)
  accepted <- tryCatch(px_post(con, path, body), plexus_invalid_error = function(e) {
    # A coordinator without the text syntax names the field it does not
    # know; with syntax = "auto" the query is sent again as its tree, and
    # so are the connection's later queries.
    texts <- !is.null(where) || !is.null(analysis[[1]]$formula)
    if (identical(con$syntax, "auto") && syntax == "text" && texts &&
        grepl("unknown field `(where|formula)`", conditionMessage(e))) {
      assign("syntax", "tree", envir = con$state)
      body <<- query_body(analysis, where, by_site, rho, syntax = "tree")
      return(px_post(con, path, body))
    }
    stop(e)
  })
  if (is.null(accepted$query_id)) {
    px_abort("internal", "the coordinator accepted the query without giving its id")
  }
  res <- px_result(con, accepted$query_id, timeout = timeout)
  res$request <- jsonlite::fromJSON(body, simplifyVector = FALSE)
  res$formula <- analysis[[1]]$formula
  res$call <- call
  res
}

#' Fetch or wait for a query's result
#'
#' Polls `GET /v1/queries/{id}` (each call waiting up to a minute on the
#' coordinator) until the query is no longer pending. Every `px_*` query
#' function does this; call it yourself to pick up a query that timed out.
#'
#' @param con A [px_connect()] connection.
#' @param query_id The id the coordinator gave the query.
#' @param timeout Seconds to wait in all; `NULL` uses the connection's.
#' @return A result object (class `px_count`, `px_glm`, `px_km`, ...).
#' @export
px_result <- function(con, query_id, timeout = NULL) {
  timeout <- timeout %||% con$timeout
  deadline <- Sys.time() + timeout
  path <- paste0("/v1/queries/", path_segment(query_id))
  repeat {
    left <- as.numeric(difftime(deadline, Sys.time(), units = "secs"))
    wait_ms <- max(0, min(60000, floor(left * 1000)))
    qr <- px_get(con, path, list(wait_ms = wait_ms), timeout = wait_ms / 1000 + 30)
    status <- qr$status %||% "pending"
    if (!identical(status, "pending")) break
    if (Sys.time() >= deadline) {
      px_abort("timeout", sprintf(
        "query %s is still running after %s s: fetch it later with px_result(con, \"%s\")",
        query_id, format(timeout), query_id), query_id = query_id)
    }
  }
  if (identical(status, "failed")) {
    err <- qr$error %||% list(code = "internal", message = "the query failed without a reason")
    px_abort(err$code %||% "internal", err$message %||% "", query_id = query_id)
  }
  if (is.null(qr$result)) {
    px_abort("internal", sprintf("query %s has status \"%s\" but no result", query_id, status))
  }
  new_result(qr)
}

# The S3 object of a succeeded QueryResult.
new_result <- function(qr) {
  result <- qr$result
  kind <- result$value$kind %||% "unknown"
  cls <- switch(kind, kaplan_meier = "px_km", paste0("px_", kind))
  structure(list(
    value = result$value,
    provenance = result$provenance,
    privacy = result$privacy,
    by_site = result$by_site,
    query_id = qr$query_id,
    study_id = qr$study_id,
    query_hash = qr$query_hash,
    submitted = ms_time(qr$submitted_unix_ms),
    finished = ms_time(qr$finished_unix_ms)
  ), class = c(cls, "px_result"))
}

ms_time <- function(ms) {
  if (is.null(ms)) return(NULL)
  as.POSIXct(ms / 1000, origin = "1970-01-01", tz = "UTC")
}

#' Count the patients of a cohort
#'
#' @param con A [px_connect()] connection.
#' @param study The study id.
#' @param where The cohort: a string in the coordinator's syntax
#'   (`age >= 65 & sex == "M"`, `%in%`, `is.na()`, `!`, `|`) or a
#'   one-sided formula (`~ age >= 65`). `NULL`: the study's whole population.
#' @param by_site Also answer for each site on its own.
#' @param rho What the query may spend of the study's privacy budget
#'   (zCDP rho); `NULL` uses the study's default.
#' @param timeout Seconds to wait for the result; `NULL` uses the
#'   connection's.
#' @return A `px_count`: `n` is the pooled count (`NA` when suppressed).
#' @examples
#' \dontrun{
#' px_count(con, "aaa-validation", where = ~ age >= 65 & smoking %in% c("former", "current"))
#' }
#' @export
px_count <- function(con, study, where = NULL, by_site = FALSE, rho = NULL, timeout = NULL) {
  px_query(con, study, list(count = empty_object()), where, by_site, rho, timeout,
           call = match.call())
}

#' Mean and standard deviation of a numeric variable
#'
#' @inheritParams px_count
#' @param variable A numeric variable of the dictionary.
#' @param by A categorical or boolean variable: one query per level (with
#'   `by == level` added to the cohort), returned as one table.
#' @return A `px_summary`, or with `by` a `px_summary_by` data frame (one
#'   row per level; a level refused by disclosure control has `NA`s and its
#'   reason in `note`).
#' @export
px_summary <- function(con, study, variable, where = NULL, by = NULL, by_site = FALSE,
                       rho = NULL, timeout = NULL) {
  analysis <- list(summary = list(variable = variable))
  if (is.null(by)) {
    return(px_query(con, study, analysis, where, by_site, rho, timeout, call = match.call()))
  }
  levels <- variable_levels(con, by)
  base <- where_text(where)
  rows <- lapply(levels, function(level) {
    cond <- sprintf("%s == %s", by, level_literal(level, by, con))
    w <- if (is.null(base)) cond else sprintf("(%s) & %s", base, cond)
    res <- tryCatch(px_query(con, study, analysis, w, by_site, rho, timeout),
                    plexus_disclosure_error = function(e) e)
    if (inherits(res, "error")) {
      return(list(row = data.frame(level = level, n = NA_real_, mean = NA_real_, sd = NA_real_,
                                   ci_lower = NA_real_, ci_upper = NA_real_,
                                   note = conditionMessage(res), stringsAsFactors = FALSE),
                  result = NULL))
    }
    list(row = cbind(data.frame(level = level, stringsAsFactors = FALSE),
                     summary_row(res$value), note = NA_character_),
         result = res)
  })
  out <- do.call(rbind, lapply(rows, `[[`, "row"))
  names(out)[1] <- by
  rownames(out) <- NULL
  structure(out, class = c("px_summary_by", "data.frame"),
            variable = variable, by = by, results = lapply(rows, `[[`, "result"))
}

variable_levels <- function(con, name) {
  dict <- px_dictionary(con)
  row <- dict[dict$name == name, , drop = FALSE]
  if (nrow(row) == 0) {
    px_abort("invalid", sprintf("variable \"%s\" is not in the data dictionary", name))
  }
  if (row$type == "boolean") return(c("false", "true"))
  levels <- attr(dict, "levels")[[name]]
  if (!length(levels)) {
    px_abort("invalid", sprintf("`by` takes a categorical or boolean variable; \"%s\" is %s", name, row$type))
  }
  unlist(levels)
}

level_literal <- function(level, by, con) {
  if (level %in% c("true", "false")) toupper(level) else sprintf("\"%s\"", gsub("\"", "\\\\\"", level))
}

#' Two-way table of two categorical or boolean variables
#'
#' @inheritParams px_count
#' @param row,column Two different categorical or boolean variables.
#' @return A `px_table`; `as.matrix()` gives the counts (`NA` when
#'   suppressed), `as.data.frame()` one row per cell.
#' @export
px_table <- function(con, study, row, column, where = NULL, by_site = FALSE, rho = NULL,
                     timeout = NULL) {
  px_query(con, study, list(table = list(row = row, column = column)), where, by_site, rho,
           timeout, call = match.call())
}

#' Generalised linear model, fitted across the sites
#'
#' Federated IRLS following R's `glm.fit`: on an exact study the estimates
#' equal `glm()` on the pooled rows.
#'
#' @inheritParams px_count
#' @param formula An R formula or its text, `death ~ age + smoking`; `- 1`
#'   or `+ 0` drops the intercept. Categorical covariates enter as
#'   indicators of every level but the first, named `variable=level`.
#' @param family `"gaussian"`, `"binomial"`, `"poisson"` or a family object
#'   with its canonical link (`binomial()`).
#' @return A `px_glm`: `print()` and `summary()` show a `summary.glm`-like
#'   table; see [tidy.px_glm()], [glance.px_glm()], `coef()`, `vcov()` is
#'   not available (the coordinator releases standard errors only).
#' @examples
#' \dontrun{
#' fit <- px_glm(con, death ~ age + diabetes, family = binomial(), study = "aaa-validation")
#' tidy(fit, exponentiate = TRUE)
#' }
#' @export
px_glm <- function(con, formula, family = "gaussian", study, where = NULL, by_site = FALSE,
                   rho = NULL, timeout = NULL) {
  analysis <- list(glm = list(formula = formula_text(formula), family = family_name(family)))
  px_query(con, study, analysis, where, by_site, rho, timeout, call = match.call())
}

#' Cox proportional hazards model, stratified by site
#'
#' Federated Newton-Raphson following `survival::coxph`; every site is its
#' own stratum, so the fit equals `coxph(... + strata(site))` on the pooled
#' rows.
#'
#' @inheritParams px_count
#' @param formula `Surv(time, event) ~ covariates`, an R formula or text.
#' @param ties `"efron"` (the coordinator's and R's default) or `"breslow"`.
#' @return A `px_cox`.
#' @export
px_cox <- function(con, formula, study, where = NULL, ties = NULL, by_site = FALSE,
                   rho = NULL, timeout = NULL) {
  cox <- list(formula = formula_text(formula))
  if (!is.null(ties)) cox$ties <- match.arg(ties, c("efron", "breslow"))
  px_query(con, study, list(cox = cox), where, by_site, rho, timeout, call = match.call())
}

#' Kaplan-Meier survival curves on a public time grid
#'
#' @inheritParams px_count
#' @param formula `Surv(time, event) ~ group` or `~ 1` for one curve.
#' @param grid `c(from, to, step)`, or explicit points wrapped in `I()`:
#'   `I(c(0, 365, 730, 1826))`. Interval j is (g_j, g_j+1]; a daily grid
#'   gives the exact product-limit estimate.
#' @return A `px_km`; see [tidy.px_km()] and [plot.px_km()].
#' @export
px_km <- function(con, formula, study, grid = c(0, 1826, 30), where = NULL, by_site = FALSE,
                  rho = NULL, timeout = NULL) {
  km <- list(formula = formula_text(formula), grid = grid_json(grid))
  px_query(con, study, list(kaplan_meier = km), where, by_site, rho, timeout, call = match.call())
}

grid_json <- function(grid) {
  if (is.list(grid)) return(grid)
  if (inherits(grid, "AsIs")) return(as.numeric(unclass(grid)))
  if (!is.numeric(grid) || length(grid) != 3) {
    px_abort("invalid", "`grid` is c(from, to, step) or explicit points in I(c(...))")
  }
  list(from = grid[[1]], to = grid[[2]], step = grid[[3]])
}
