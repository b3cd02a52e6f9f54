# Kaplan-Meier results: print like print.survfit, tidy like
# broom::tidy(survfit), plot with base graphics.

nullable <- function(xs) vapply(xs, function(v) if (is.null(v)) NA_real_ else as.numeric(v), numeric(1))

km_strata <- function(x, curve) {
  g <- x$value$group
  if (is.null(g)) NA_character_ else paste0(g, "=", curve$group)
}

#' @rdname tidy.px_glm
#' @return For a `px_km`: one row per grid interval end and curve, like
#'   `broom::tidy(survfit)`: `time`, `n.risk`, `n.event`, `n.censor`,
#'   `estimate` (survival), `std.error` (Greenwood, of the survival as
#'   `summary.survfit` gives it), `conf.high`, `conf.low`, and `strata`
#'   (`group=level`) when the curves are grouped. Values the released counts
#'   do not state are `NA`.
#' @method tidy px_km
#' @export
tidy.px_km <- function(x, ...) {
  rows <- lapply(x$value$curves, function(cv) {
    n <- length(cv$times)
    data.frame(time = as.numeric(unlist(cv$times)),
               n.risk = as.numeric(unlist(cv$n_risk)),
               n.event = as.numeric(unlist(cv$n_event)),
               n.censor = as.numeric(unlist(cv$n_censor)),
               estimate = nullable(cv$survival),
               std.error = nullable(cv$std_error),
               conf.high = nullable(cv$upper),
               conf.low = nullable(cv$lower),
               strata = rep(km_strata(x, cv), n),
               stringsAsFactors = FALSE)
  })
  out <- do.call(rbind, rows)
  if (is.null(x$value$group)) out$strata <- NULL
  out
}

#' @export
as.data.frame.px_km <- function(x, ...) tidy.px_km(x, ...)

#' @export
print.px_km <- function(x, ...) {
  v <- x$value
  cat(sprintf("Kaplan-Meier: Surv(%s, %s) ~ %s, %s grid intervals from %s; intervals: %s\n\n",
              v$time, v$event, v$group %||% "1", v$grid_intervals, v$start, v$confidence))
  curves <- v$curves
  tab <- data.frame(
    n = num(curves, "at_risk"), events = num(curves, "events"),
    median = num(curves, "median"),
    stated.until = num(curves, "stated_until"))
  rownames(tab) <- if (is.null(v$group)) rep("all", length(curves)) else
    vapply(curves, function(cv) km_strata(x, cv), character(1))
  print(tab)
  for (cv in curves) {
    for (note in unlist(cv$notes)) cat(sprintf("  %s: %s\n", cv$group, note))
    if (length(cv$suppressed_at)) {
      cat(sprintf("  %s: suppressed at %s\n", cv$group, paste(unlist(cv$suppressed_at), collapse = ", ")))
    }
  }
  lr <- v$log_rank
  if (!is.null(lr)) {
    cat(sprintf("\nLog-rank test: Chisq= %s on %s degrees of freedom, p= %s\n",
                format(round(lr$chi_square, 1)), lr$df, format.pval(lr$p_value, digits = 3)))
    if (!is.null(lr$note)) cat("  note:", lr$note, "\n")
  }
  print_provenance(x)
}

#' Plot Kaplan-Meier curves
#'
#' Step curves with base graphics, each ending where its survival is last
#' stated.
#'
#' @param x A `px_km` result.
#' @param conf.int Draw the 95% intervals (dashed).
#' @param col,lty Colours and line types, recycled over the curves.
#' @param xlab,ylab,main Axis labels and title.
#' @param legend Where to put the legend (`NULL`: none); only with groups.
#' @param ... Passed to `plot()`.
#' @return `x`, invisibly.
#' @export
plot.px_km <- function(x, conf.int = TRUE, col = seq_along(x$value$curves), lty = 1,
                       xlab = x$value$time, ylab = "Survival", main = NULL,
                       legend = "bottomleft", ...) {
  v <- x$value
  curves <- v$curves
  col <- rep_len(col, length(curves))
  lty <- rep_len(lty, length(curves))
  xmax <- max(v$start, unlist(lapply(curves, function(cv) unlist(cv$times))), na.rm = TRUE)
  graphics::plot(NA, xlim = c(v$start, xmax), ylim = c(0, 1), xlab = xlab, ylab = ylab,
                 main = main, ...)
  for (i in seq_along(curves)) {
    cv <- curves[[i]]
    s <- nullable(cv$survival)
    keep <- !is.na(s)
    t <- c(v$start, as.numeric(unlist(cv$times))[keep])
    graphics::lines(t, c(1, s[keep]), type = "s", col = col[i], lty = lty[i])
    if (conf.int) {
      lo <- nullable(cv$lower)[keep]
      hi <- nullable(cv$upper)[keep]
      graphics::lines(t, c(1, lo), type = "s", col = col[i], lty = 2)
      graphics::lines(t, c(1, hi), type = "s", col = col[i], lty = 2)
    }
  }
  if (!is.null(v$group) && !is.null(legend)) {
    graphics::legend(legend, legend = vapply(curves, function(cv) km_strata(x, cv), character(1)),
                     col = col, lty = lty, bty = "n")
  }
  invisible(x)
}
