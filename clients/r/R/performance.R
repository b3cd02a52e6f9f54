# A registered model validated across the sites (model_performance):
# tidy() and glance() per group, the long tables of thresholds,
# calibration bins, ROC points and fairness gaps, and printing.

# "all" for everyone, "variable=level" for a subgroup (the server's label).
perf_label <- function(g) {
  if (is.null(g[["variable"]]) || is.null(g[["level"]])) return("all")
  paste0(g[["variable"]], "=", g[["level"]])
}

perf_groups <- function(value) value$groups %||% list()

# The group of everyone in a value (the pooled one or a site's).
perf_overall <- function(value) {
  for (g in perf_groups(value)) if (perf_label(g) == "all") return(g)
  list()
}

# An estimate object as its estimate and 95% interval, NA where not stated.
perf_estimate <- function(e) {
  ci <- unlist(e[["ci"]])
  c(estimate = as.numeric(e[["estimate"]] %||% NA),
    low = if (length(ci) == 2) as.numeric(ci[[1]]) else NA_real_,
    high = if (length(ci) == 2) as.numeric(ci[[2]]) else NA_real_)
}

# Every group's entries of a list field (thresholds, calibration, roc),
# with the group's label for each.
perf_rows <- function(x, field) {
  groups <- perf_groups(x$value)
  list(items = unlist(lapply(groups, function(g) g[[field]] %||% list()), recursive = FALSE) %||% list(),
       group = unlist(lapply(groups, function(g) rep(perf_label(g), length(g[[field]])))) %||% character(0))
}

check_performance <- function(x, fun) {
  if (!inherits(x, "px_model_performance")) {
    px_abort("invalid", sprintf("%s() takes a model_performance result, not a %s", fun, class(x)[1]))
  }
}

#' @rdname tidy.px_glm
#' @return For a `px_model_performance`: one row per group (`all`, then
#'   `variable=level` for every level of every subgroup): `group`, `n`,
#'   `events`, `prevalence`, `auc` with `auc.low` and `auc.high` (its 95%
#'   DeLong interval), `auc.error.bound`, `brier`, `brier.error.bound`,
#'   `calibration.in.the.large`, `calibration.slope` and
#'   `calibration.intercept` each with `.low` and `.high`,
#'   `observed.expected` and `converged`. Metrics not stated (a group
#'   without patients of both kinds) are `NA`.
#' @method tidy px_model_performance
#' @export
tidy.px_model_performance <- function(x, ...) {
  groups <- perf_groups(x$value)
  est <- function(field) {
    e <- lapply(groups, function(g) perf_estimate(g[[field]]))
    lapply(c(1, 2, 3), function(i) vapply(e, function(v) v[[i]], numeric(1)))
  }
  auc <- est("auc")
  citl <- est("calibration_in_the_large")
  slope <- est("calibration_slope")
  intercept <- est("calibration_intercept")
  data.frame(
    group = vapply(groups, perf_label, character(1)),
    n = num(groups, "n"),
    events = num(groups, "positives"),
    prevalence = num(groups, "prevalence"),
    auc = auc[[1]], auc.low = auc[[2]], auc.high = auc[[3]],
    auc.error.bound = num(groups, "auc_error_bound"),
    brier = num(groups, "brier"),
    brier.error.bound = num(groups, "brier_error_bound"),
    calibration.in.the.large = citl[[1]], calibration.in.the.large.low = citl[[2]],
    calibration.in.the.large.high = citl[[3]],
    calibration.slope = slope[[1]], calibration.slope.low = slope[[2]],
    calibration.slope.high = slope[[3]],
    calibration.intercept = intercept[[1]], calibration.intercept.low = intercept[[2]],
    calibration.intercept.high = intercept[[3]],
    observed.expected = num(groups, "observed_expected"),
    converged = vapply(groups, function(g) isTRUE(g[["converged"]]), logical(1)),
    stringsAsFactors = FALSE)
}

#' @export
as.data.frame.px_model_performance <- function(x, ...) tidy.px_model_performance(x, ...)

#' @rdname glance.px_glm
#' @return For a `px_model_performance`: `model`, `model.hash`, `outcome`,
#'   `nobs` and `nevent` (everyone's patients and events), `auc`
#'   (everyone's), `rounds` (of the calibration fits) and `converged` (every
#'   group's fits), with `nodes`, `privacy.cost` and `privacy.remaining`.
#' @method glance px_model_performance
#' @export
glance.px_model_performance <- function(x, ...) {
  v <- x$value
  everyone <- perf_overall(v)
  cbind(data.frame(model = v[["model"]] %||% NA_character_,
                   model.hash = v[["model_hash"]] %||% NA_character_,
                   outcome = v[["outcome"]] %||% NA_character_,
                   nobs = as.numeric(everyone[["n"]] %||% NA),
                   nevent = as.numeric(everyone[["positives"]] %||% NA),
                   auc = perf_estimate(everyone[["auc"]])[["estimate"]],
                   rounds = as.numeric(v[["rounds"]] %||% NA),
                   converged = all(vapply(perf_groups(v), function(g) isTRUE(g[["converged"]]), logical(1))),
                   stringsAsFactors = FALSE),
        privacy_cols(x))
}

#' Tables of a model's validation
#'
#' The long tables of a `model_performance` result (from [px_query()] with
#' `list(model_performance = list(model = , outcome = , ...))`), one row
#' per group and entry; the groups are `all`, then `variable=level` for
#' every level of every subgroup. [tidy.px_glm()] gives discrimination and
#' calibration per group, [glance.px_glm()] the model and its overall AUC.
#'
#' @param x A `px_model_performance` result.
#' @return A data frame. `px_thresholds()`: `group`, `requested` (the
#'   threshold asked for), `threshold` (the one used: the released segment
#'   end nearest it), `tp`, `fp`, `tn`, `fn`, `sensitivity`,
#'   `specificity`, `ppv`, `npv` (`NA` where undefined), `net.benefit` and
#'   `treat.all` (the net benefit of treating everyone).
#'   `px_calibration()`: `group`, `bin.lower`, `bin.upper`, `n`,
#'   `observed` and `predicted` (mean predicted risk) per bin of predicted
#'   risk. `px_roc()`: `group`, `threshold` (at or above it is called
#'   positive), `fpr`, `tpr`. `px_fairness()`: per subgroup variable and
#'   metric (per threshold for the true- and false-positive rates)
#'   `variable`, `metric`, `threshold` (`NA` for metrics without one),
#'   `gap` (the largest difference between its levels), `lowest`,
#'   `highest` (the levels with the lowest and highest value).
#' @examples
#' \dontrun{
#' res <- px_query(con, "aaa-validation", list(model_performance = list(
#'   model = "risk", outcome = "death", subgroups = I("sex"), thresholds = c(0.1, 0.2, 0.3))))
#' px_thresholds(res)
#' }
#' @export
px_thresholds <- function(x) {
  check_performance(x, "px_thresholds")
  r <- perf_rows(x, "thresholds")
  t <- r$items
  data.frame(group = r$group, requested = num(t, "requested"), threshold = num(t, "threshold"),
             tp = num(t, "tp"), fp = num(t, "fp"), tn = num(t, "tn"), fn = num(t, "fn"),
             sensitivity = num(t, "sensitivity"), specificity = num(t, "specificity"),
             ppv = num(t, "ppv"), npv = num(t, "npv"), net.benefit = num(t, "net_benefit"),
             treat.all = num(t, "treat_all"), stringsAsFactors = FALSE)
}

#' @rdname px_thresholds
#' @export
px_calibration <- function(x) {
  check_performance(x, "px_calibration")
  r <- perf_rows(x, "calibration")
  b <- r$items
  data.frame(group = r$group, bin.lower = num(b, "lower"), bin.upper = num(b, "upper"),
             n = num(b, "n"), observed = num(b, "observed"), predicted = num(b, "predicted"),
             stringsAsFactors = FALSE)
}

#' @rdname px_thresholds
#' @export
px_roc <- function(x) {
  check_performance(x, "px_roc")
  r <- perf_rows(x, "roc")
  p <- r$items
  data.frame(group = r$group, threshold = num(p, "threshold"), fpr = num(p, "fpr"),
             tpr = num(p, "tpr"), stringsAsFactors = FALSE)
}

#' @rdname px_thresholds
#' @export
px_fairness <- function(x) {
  check_performance(x, "px_fairness")
  f <- x$value$fairness %||% list()
  data.frame(variable = chr(f, "variable"), metric = chr(f, "metric"),
             threshold = num(f, "threshold"), gap = num(f, "gap"),
             lowest = chr(f, "lowest"), highest = chr(f, "highest"), stringsAsFactors = FALSE)
}

#' @export
print.px_model_performance <- function(x, digits = 4, ...) {
  v <- x$value
  td <- tidy.px_model_performance(x)
  cat(sprintf("Validation of model %s (sha256 %s) predicting %s; calibration fits in %s rounds%s\n\n",
              v[["model"]], substr(v[["model_hash"]] %||% "?", 1, 16), v[["outcome"]], v[["rounds"]] %||% "?",
              if (all(td$converged)) "" else " (not all converged)"))
  tab <- data.frame(n = td$n, events = td$events, auc = td$auc, auc.low = td$auc.low,
                    auc.high = td$auc.high, brier = td$brier, citl = td$calibration.in.the.large,
                    slope = td$calibration.slope, o.e = td$observed.expected)
  rownames(tab) <- td$group
  print(tab, digits = digits)
  cat("citl: calibration in the large; o.e: observed over expected events\n")
  th <- px_thresholds(x)
  th <- th[th$group == "all", setdiff(names(th), c("group", "tp", "fp", "tn", "fn")), drop = FALSE]
  if (nrow(th)) {
    cat("\nAt each threshold (everyone):\n")
    print(th, row.names = FALSE, digits = digits)
  }
  fair <- px_fairness(x)
  if (nrow(fair)) {
    cat("\nLargest gaps between the levels of each subgroup:\n")
    print(fair, row.names = FALSE, digits = digits)
  }
  print_by_site(x, function(s) {
    g <- perf_overall(s)
    sprintf("n %s, events %s, AUC %s", fmt(g[["n"]]), fmt(g[["positives"]]),
            fmt(perf_estimate(g[["auc"]])[["estimate"]], 3))
  })
  print_provenance(x)
}
