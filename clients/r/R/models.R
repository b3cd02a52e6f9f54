# GLM and Cox results: printing like summary.glm / summary.coxph, and the
# broom-style tidy() and glance().

term_label <- function(term) ifelse(term == "(intercept)", "(Intercept)", term)

coef_frame <- function(coefs) {
  data.frame(
    term = term_label(chr(coefs, "term")),
    estimate = num(coefs, "estimate"),
    std_error = num(coefs, "std_error"),
    statistic = num(coefs, "statistic"),
    p_value = num(coefs, "p_value"),
    ci_lower = num(coefs, "ci_lower"),
    ci_upper = num(coefs, "ci_upper"),
    ratio = vapply(coefs, function(c) as.numeric(c$ratio$estimate %||% NA), numeric(1)),
    ratio_lower = vapply(coefs, function(c) as.numeric(c$ratio$ci_lower %||% NA), numeric(1)),
    ratio_upper = vapply(coefs, function(c) as.numeric(c$ratio$ci_upper %||% NA), numeric(1)),
    stringsAsFactors = FALSE)
}

model_text <- function(x) {
  if (!is.null(x$formula)) return(x$formula)
  req <- x$request$analysis
  f <- req$glm$formula %||% req$cox$formula
  if (!is.null(f)) return(f)
  v <- x$value
  if (!is.null(v$outcome)) return(v$outcome)
  sprintf("Surv(%s, %s)", v$time, v$event)
}

#' @export
coef.px_glm <- function(object, ...) {
  cf <- coef_frame(object$value$coefficients)
  stats::setNames(cf$estimate, cf$term)
}

#' @export
coef.px_cox <- coef.px_glm

#' @export
nobs.px_glm <- function(object, ...) as.numeric(object$value$n)

#' @export
nobs.px_cox <- nobs.px_glm

#' @export
confint.px_glm <- function(object, parm, level = 0.95, ...) {
  if (!isTRUE(all.equal(level, 0.95))) {
    px_abort("invalid", "the coordinator releases 95% intervals only")
  }
  cf <- coef_frame(object$value$coefficients)
  m <- cbind(cf$ci_lower, cf$ci_upper)
  dimnames(m) <- list(cf$term, c("2.5 %", "97.5 %"))
  if (!missing(parm)) m <- m[parm, , drop = FALSE]
  m
}

#' @export
confint.px_cox <- confint.px_glm

#' @export
summary.px_glm <- function(object, ...) object

#' @export
summary.px_cox <- function(object, ...) object

#' @export
print.px_glm <- function(x, digits = max(3L, getOption("digits") - 3L),
                         signif.stars = getOption("show.signif.stars"), ...) {
  v <- x$value
  cat("\nCall:\n")
  cat(sprintf("px_glm(formula = %s, family = \"%s\", study = \"%s\")\n\n",
              model_text(x), v$family, x$study_id %||% "?"))
  cf <- coef_frame(v$coefficients)
  stat <- v$statistic %||% "z"
  m <- cbind(cf$estimate, cf$std_error, cf$statistic, cf$p_value)
  dimnames(m) <- list(cf$term, c("Estimate", "Std. Error", paste(stat, "value"),
                                 sprintf("Pr(>|%s|)", stat)))
  cat("Coefficients:\n")
  stats::printCoefmat(m, digits = digits, signif.stars = signif.stars, na.print = "NA")
  cat(sprintf("\n(Dispersion parameter for %s family taken to be %s)\n\n", v$family,
              format(v$dispersion, digits = max(5L, digits + 1L))))
  dev <- format(c(as.numeric(v$null_deviance %||% NA), v$deviance), digits = max(5L, digits + 1L))
  df <- format(c(v$df_null, v$df_residual))
  label <- format(c("Null deviance:", "Residual deviance:"), justify = "right")
  cat(paste0(label, " ", dev, "  on ", df, "  degrees of freedom\n"), sep = "")
  cat(sprintf("n = %s (%s)\n", format(v$n), gsub("_", " ", v$missing %||% "complete_cases")))
  cat(sprintf("\nNumber of Fisher Scoring iterations: %s%s\n", v$iterations,
              if (isFALSE(v$converged)) " (did not converge)" else ""))
  print_by_site(x, function(s) paste(sprintf("%s %s", term_label(chr(s$coefficients, "term")),
                                             format(num(s$coefficients, "estimate"), digits = 4)),
                                     collapse = ", "))
  print_provenance(x)
}

#' @export
print.px_cox <- function(x, digits = max(3L, getOption("digits") - 3L),
                         signif.stars = getOption("show.signif.stars"), ...) {
  v <- x$value
  cat("Call:\n")
  cat(sprintf("px_cox(formula = %s, study = \"%s\", ties = \"%s\")\n\n", model_text(x),
              x$study_id %||% "?", v$ties))
  cat(sprintf("  n= %s, number of events= %s (strata: %s)\n\n", v$n, v$events, v$strata))
  cf <- coef_frame(v$coefficients)
  m <- cbind(cf$estimate, cf$ratio, cf$std_error, cf$statistic, cf$p_value)
  dimnames(m) <- list(cf$term, c("coef", "exp(coef)", "se(coef)", "z", "Pr(>|z|)"))
  stats::printCoefmat(m, digits = digits, signif.stars = signif.stars, P.values = TRUE,
                      has.Pvalue = TRUE)
  e <- cbind(cf$ratio, 1 / cf$ratio, cf$ratio_lower, cf$ratio_upper)
  dimnames(e) <- list(cf$term, c("exp(coef)", "exp(-coef)", "lower .95", "upper .95"))
  cat("\n")
  print(e, digits = digits)
  lr <- v$likelihood_ratio
  cat(sprintf("\nLikelihood ratio test= %s  on %s df,   p=%s\n", format(round(lr$chi_square, 2)),
              lr$df, format.pval(lr$p_value, digits = digits)))
  cat(sprintf("Log partial likelihood: %s (null %s); %s iterations%s\n",
              format(v$loglik, digits = 8), format(v$loglik_null, digits = 8), v$iterations,
              if (isFALSE(v$converged)) ", did not converge" else ""))
  print_provenance(x)
}

#' Tidy a Plexus model or survival result
#'
#' broom-style tables: the generics' `tidy()` and `glance()` are
#' re-exported from the generics package, so they work with or without
#' broom attached.
#'
#' @param x A `px_glm`, `px_cox`, `px_km` or `px_model_performance` result.
#' @param exponentiate Give odds, rate or hazard ratios (the coordinator's
#'   `ratio`) instead of coefficients.
#' @param conf.int Ignored: the 95% interval is always given.
#' @param ... Unused.
#' @return A data frame with broom's columns: `term`, `estimate`,
#'   `std.error`, `statistic`, `p.value`, `conf.low`, `conf.high`.
#' @method tidy px_glm
#' @export
tidy.px_glm <- function(x, exponentiate = FALSE, conf.int = TRUE, ...) {
  cf <- coef_frame(x$value$coefficients)
  out <- data.frame(term = cf$term, estimate = cf$estimate, std.error = cf$std_error,
                    statistic = cf$statistic, p.value = cf$p_value,
                    conf.low = cf$ci_lower, conf.high = cf$ci_upper, stringsAsFactors = FALSE)
  if (isTRUE(exponentiate)) {
    has_ratio <- !is.na(cf$ratio)
    out$estimate <- ifelse(has_ratio, cf$ratio, exp(cf$estimate))
    out$conf.low <- ifelse(has_ratio, cf$ratio_lower, exp(cf$ci_lower))
    out$conf.high <- ifelse(has_ratio, cf$ratio_upper, exp(cf$ci_upper))
  }
  out
}

#' @rdname tidy.px_glm
#' @method tidy px_cox
#' @export
tidy.px_cox <- tidy.px_glm

#' @export
as.data.frame.px_glm <- function(x, ...) tidy.px_glm(x, ...)

#' @export
as.data.frame.px_cox <- function(x, ...) tidy.px_glm(x, ...)

privacy_cols <- function(x) {
  pr <- x$privacy
  p <- x$provenance
  data.frame(nodes = as.numeric(p$answered %||% NA),
             privacy.cost = if (is.null(pr) || isTRUE(pr$exact)) 0 else as.numeric(pr$charged_rho %||% NA),
             privacy.remaining = if (is.null(pr) || isTRUE(pr$exact)) Inf else as.numeric(pr$remaining_rho %||% NA))
}

#' Glance at a Plexus model
#'
#' @param x A `px_glm`, `px_cox` or `px_model_performance` result.
#' @param ... Unused.
#' @return A one-row data frame: for a GLM `nobs`, `deviance`,
#'   `null.deviance`, `df.residual`, `df.null`, `dispersion`, `iterations`,
#'   `converged`; for Cox `nobs`, `nevent`, `logLik`, `statistic.log`
#'   (likelihood ratio), `p.value.log`, `iterations`; both with `nodes`
#'   (answered), `privacy.cost` (rho charged; 0 in an exact study) and
#'   `privacy.remaining` (rho; `Inf` in an exact study).
#' @method glance px_glm
#' @export
glance.px_glm <- function(x, ...) {
  v <- x$value
  cbind(data.frame(nobs = as.numeric(v$n), deviance = v$deviance,
                   null.deviance = as.numeric(v$null_deviance %||% NA),
                   df.residual = v$df_residual, df.null = v$df_null, dispersion = v$dispersion,
                   iterations = v$iterations, converged = isTRUE(v$converged)),
        privacy_cols(x))
}

#' @rdname glance.px_glm
#' @method glance px_cox
#' @export
glance.px_cox <- function(x, ...) {
  v <- x$value
  lr <- v$likelihood_ratio
  cbind(data.frame(nobs = as.numeric(v$n), nevent = as.numeric(v$events), logLik = v$loglik,
                   statistic.log = lr$chi_square, p.value.log = lr$p_value,
                   iterations = v$iterations, converged = isTRUE(v$converged)),
        privacy_cols(x))
}
