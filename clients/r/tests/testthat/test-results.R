result_of <- function(name, fun = px_count, ...) {
  con <- fake_connection(answering(fixture(name)))
  fun(con, ...)
}

test_that("a glm prints like summary.glm with its provenance", {
  fit <- result_of("glm_binomial.json", px_glm, formula = death ~ age + diabetes + smoking,
                   family = "binomial", study = "aaa-validation")
  out <- capture.output(print(fit))
  expect_true(any(grepl("^px_glm\\(formula = death ~ age \\+ diabetes \\+ smoking, family = \"binomial\", study = \"aaa-validation\"\\)", out)))
  expect_true(any(grepl("Estimate Std. Error z value Pr(>|z|)", out, fixed = TRUE)))
  expect_true(any(grepl("^\\(Intercept\\) +-4\\.12", out)))
  expect_true(any(grepl("^diabetes=true ", out)))
  expect_true(any(grepl("Dispersion parameter for binomial family taken to be 1", out, fixed = TRUE)))
  expect_true(any(grepl("^    Null deviance: 1601.2  on 1449  degrees of freedom", out)))
  expect_true(any(grepl("^Residual deviance: 1523.5  on 1446  degrees of freedom", out)))
  expect_true(any(grepl("Number of Fisher Scoring iterations: 4", out, fixed = TRUE)))
  expect_true(any(grepl("Nodes: 3 of 3 answered (hospital-a, hospital-b, hospital-c)", out, fixed = TRUE)))
  expect_true(any(grepl("Privacy: exact study", out, fixed = TRUE)))
  expect_equal(coef(fit)[["age"]], 0.0456)
  expect_equal(nobs(fit), 1450)
  expect_equal(confint(fit)["age", ], c(`2.5 %` = 0.0336, `97.5 %` = 0.0576))
})

test_that("a glm tidies into broom's columns, with ratios on request", {
  fit <- result_of("glm_binomial.json", px_glm, formula = "death ~ age", family = "binomial",
                   study = "s")
  td <- tidy(fit)
  expect_equal(names(td), c("term", "estimate", "std.error", "statistic", "p.value", "conf.low", "conf.high"))
  expect_equal(td$term, c("(Intercept)", "age", "diabetes=true", "smoking=current"))
  expect_equal(td$estimate[1], -4.123456789012345)
  expect_equal(td$std.error[1], 0.4567890123456789)
  or <- tidy(fit, exponentiate = TRUE)
  expect_equal(or$estimate[2], 1.04666)
  expect_equal(or$conf.low[3], 1.05390)
  expect_equal(or$std.error, td$std.error)
  expect_equal(as.data.frame(fit), td)
  gl <- glance(fit)
  expect_equal(gl$nobs, 1450)
  expect_equal(gl$deviance, 1523.4567)
  expect_equal(gl$null.deviance, 1601.2345)
  expect_equal(gl$df.residual, 1446)
  expect_equal(gl$iterations, 4)
  expect_equal(gl$nodes, 3)
  expect_equal(gl$privacy.cost, 0)
  expect_equal(gl$privacy.remaining, Inf)
})

test_that("a gaussian fit under differential privacy shows t values, dispersion and its cost", {
  fit <- result_of("glm_gaussian_dp.json", px_glm, formula = sbp ~ age, study = "aaa-outcomes")
  out <- capture.output(print(fit))
  expect_true(any(grepl("Estimate Std. Error t value Pr(>|t|)", out, fixed = TRUE)))
  expect_true(any(grepl("Dispersion parameter for gaussian family taken to be 388.73", out, fixed = TRUE)))
  expect_true(any(grepl("Nodes: 2 of 3 answered (hospital-a, hospital-b)", out, fixed = TRUE)))
  expect_true(any(grepl("hospital-c: missing (not connected)", out, fixed = TRUE)))
  expect_true(any(grepl("Privacy: cost rho 0.05 (charged 0.05); budget left rho 0.65 of 1", out, fixed = TRUE)))
  gl <- glance(fit)
  expect_equal(gl$privacy.cost, 0.05)
  expect_equal(gl$privacy.remaining, 0.65)
  expect_equal(tidy(fit, exponentiate = TRUE)$estimate, exp(c(110.5, 0.41)))
})

test_that("a cox fit prints hazard ratios and tidies with exp(coef) on request", {
  fit <- result_of("cox.json", px_cox, formula = Surv(followup_days, death) ~ age + diabetes,
                   study = "aaa-validation")
  out <- capture.output(print(fit))
  expect_true(any(grepl("n= 1450, number of events= 312", out, fixed = TRUE)))
  expect_true(any(grepl("coef exp(coef) se(coef)", out, fixed = TRUE)))
  expect_true(any(grepl("exp(-coef) lower .95 upper .95", out, fixed = TRUE)))
  expect_true(any(grepl("Likelihood ratio test= 70.94  on 2 df", out, fixed = TRUE)))
  td <- tidy(fit)
  expect_equal(td$term, c("age", "diabetes=true"))
  expect_equal(td$estimate, c(0.052, 0.41))
  hr <- tidy(fit, exponentiate = TRUE)
  expect_equal(hr$estimate, c(1.05338, 1.50682))
  expect_equal(hr$conf.high, c(1.06823, 1.94444))
  gl <- glance(fit)
  expect_equal(gl$nevent, 312)
  expect_equal(gl$logLik, -1987.654321)
  expect_equal(gl$statistic.log, 70.93827)
})

test_that("kaplan-meier tidies like broom's survfit and plots", {
  km <- result_of("km.json", px_km, formula = Surv(followup_days, death) ~ diabetes, study = "s")
  td <- tidy(km)
  expect_equal(names(td), c("time", "n.risk", "n.event", "n.censor", "estimate", "std.error",
                            "conf.high", "conf.low", "strata"))
  expect_equal(nrow(td), 6)
  expect_equal(td$strata, rep(c("diabetes=false", "diabetes=true"), each = 3))
  expect_equal(td$estimate[c(1, 6)], c(0.96, NA))
  expect_equal(td$n.risk[4], 450)
  out <- capture.output(print(km))
  expect_true(any(grepl("Log-rank test: Chisq= 12.3 on 1 degrees of freedom", out, fixed = TRUE)))
  expect_true(any(grepl("true: intervals merged after 730 at hospital-c", out, fixed = TRUE)))
  pdf(NULL)
  on.exit(dev.off())
  expect_invisible(plot(km))
  expect_invisible(plot(km, conf.int = FALSE, legend = NULL))
})

test_that("counts, summaries and tables print and convert", {
  n <- result_of("count.json", px_count, study = "aaa-outcomes")
  out <- capture.output(print(n))
  expect_equal(out[1], "Count: 1234")
  expect_true(any(grepl("hospital-b: no answer: disclosure: cohort under 5", out, fixed = TRUE)))
  expect_true(any(grepl("noise sd of a count: 7.07", out, fixed = TRUE)))
  expect_equal(as.data.frame(n), data.frame(n = 1234, suppressed = FALSE))
  s <- result_of("summary.json", px_summary, study = "s", variable = "bmi")
  expect_equal(as.data.frame(s), data.frame(variable = "bmi", n = 1400, mean = 27.31, sd = 4.3,
                                            ci_lower = 27.08, ci_upper = 27.54))
  expect_output(print(s), "Summary of bmi")
  tb <- result_of("table.json", px_table, study = "s", row = "smoking", column = "death")
  m <- as.matrix(tb)
  expect_equal(dim(m), c(3, 2))
  expect_equal(m["former", "true"], 90)
  expect_true(is.na(m["current", "true"]))
  expect_equal(names(dimnames(m)), c("smoking", "death"))
  df <- as.data.frame(tb)
  expect_equal(df$count, c(500, 80, 400, 90, 300, NA))
  expect_equal(df$smoking[1:2], c("never", "never"))
  out <- capture.output(print(tb))
  expect_true(any(grepl("<k: suppressed", out, fixed = TRUE)))
  expect_true(any(grepl("hospital-c: refused (study not on its allowlist)", out, fixed = TRUE)))
  pv <- px_provenance(tb)
  expect_equal(pv$status, c("answered", "answered", "refused"))
  expect_equal(pv$code[3], "policy")
})

# A real pooled model_performance result (value, provenance, by_site,
# privacy) of three sites, by sex, at thresholds 0.1, 0.2 and 0.3, as the
# coordinator's QueryResult.
performance <- function() {
  envelope <- paste0('{"query_id": "q1", "study_id": "aaa-validation", "status": "succeeded", "result": ',
                     fixture("model_performance.json"), "}")
  con <- fake_connection(answering(envelope))
  res <- px_query(con, "aaa-validation", list(model_performance = list(
    model = "lightgbm", outcome = "death", subgroups = I("sex"), thresholds = c(0.1, 0.2, 0.3))))
  list(con = con, res = res)
}

test_that("a model_performance result tidies one row per group", {
  p <- performance()
  res <- p$res
  expect_s3_class(res, "px_model_performance")
  expect_equal(posted(p$con)[[1]]$analysis$model_performance$subgroups, list("sex"))
  td <- tidy(res)
  expect_equal(names(td), c("group", "n", "events", "prevalence", "auc", "auc.low", "auc.high",
                            "auc.error.bound", "brier", "brier.error.bound", "calibration.in.the.large",
                            "calibration.in.the.large.low", "calibration.in.the.large.high",
                            "calibration.slope", "calibration.slope.low", "calibration.slope.high",
                            "calibration.intercept", "calibration.intercept.low",
                            "calibration.intercept.high", "observed.expected", "converged"))
  expect_equal(td$group, c("all", "sex=F", "sex=M"))
  expect_equal(td$n, c(3948, 1377, 2571))
  expect_equal(td$events, c(1457, 426, 1031))
  expect_equal(td$auc[1], 0.6996356409498353, tolerance = 1e-15)
  expect_equal(c(td$auc.low[1], td$auc.high[1]), c(0.6830636654424604, 0.7162076164572102), tolerance = 1e-15)
  expect_equal(td$auc.error.bound[1], 0.0674247469338486, tolerance = 1e-15)
  expect_equal(td$brier[1], 0.20551975404436978, tolerance = 1e-15)
  expect_equal(td$calibration.in.the.large[1], -0.0004462846259410218, tolerance = 1e-15)
  expect_equal(td$calibration.slope[1], 1.2377552652817445, tolerance = 1e-15)
  expect_equal(td$calibration.slope.high[1], 1.3556351964044167, tolerance = 1e-15)
  expect_equal(td$observed.expected[1], 0.9997420017252668, tolerance = 1e-15)
  expect_equal(td$auc[2], 0.6924425981052809, tolerance = 1e-15)
  expect_true(all(td$converged))
  expect_equal(as.data.frame(res), td)
})

test_that("a model_performance result gives thresholds, calibration, roc and fairness", {
  res <- performance()$res
  th <- px_thresholds(res)
  expect_equal(nrow(th), 3 * 3)
  expect_equal(th$requested, rep(c(0.1, 0.2, 0.3), 3))
  all02 <- th[th$group == "all" & th$requested == 0.2, ]
  expect_equal(all02$threshold, 0.25)
  expect_equal(c(all02$tp, all02$fp, all02$tn, all02$fn), c(1296, 1682, 809, 161))
  expect_equal(all02$sensitivity, 0.8894989704873026, tolerance = 1e-15)
  expect_equal(all02$net.benefit, 0.18625464370145223, tolerance = 1e-15)
  expect_equal(all02$treat.all, 0.15873015873015878, tolerance = 1e-15)
  expect_true(is.na(th$npv[th$group == "all" & th$requested == 0.1]))
  cal <- px_calibration(res)
  expect_equal(nrow(cal), 3 * 5)
  expect_equal(unlist(cal[1, c("bin.lower", "bin.upper", "n")], use.names = FALSE), c(0, 0.3, 1392))
  expect_equal(cal$observed[1], 0.19468390804597702, tolerance = 1e-15)
  expect_equal(sum(cal$n[cal$group == "sex=M"]), 2571)
  roc <- px_roc(res)
  expect_equal(nrow(roc), 3 * 9)
  expect_equal(roc$fpr[2], 0.026896828582898435, tolerance = 1e-15)
  fair <- px_fairness(res)
  expect_equal(nrow(fair), 3 + 2 * 3)
  auc <- fair[fair$metric == "auc", ]
  expect_equal(c(auc$variable, auc$lowest, auc$highest), c("sex", "F", "M"))
  expect_true(is.na(auc$threshold))
  expect_equal(auc$gap, 0.0006444312572092548, tolerance = 1e-15)
  expect_equal(fair$gap[fair$metric == "false_positive_rate" & fair$threshold %in% 0.3], 0.16503748617313285,
               tolerance = 1e-15)
  expect_error(px_thresholds(result_of("count.json", px_count, study = "s")),
               class = "plexus_invalid_error")
})

test_that("a model_performance result glances and prints with its sites", {
  res <- performance()$res
  gl <- glance(res)
  expect_equal(gl$model, "lightgbm")
  expect_equal(gl$model.hash, "ebeca6c61555da3f4963d0374b032a0a161f0a064dbec601b1e3355da463231b")
  expect_equal(gl$outcome, "death")
  expect_equal(c(gl$nobs, gl$nevent, gl$rounds), c(3948, 1457, 1))
  expect_equal(gl$auc, 0.6996356409498353, tolerance = 1e-15)
  expect_true(gl$converged)
  expect_equal(gl$nodes, 3)
  expect_equal(gl$privacy.cost, 0)
  out <- capture.output(print(res))
  expect_true(any(grepl("Validation of model lightgbm (sha256 ebeca6c61555da3f) predicting death", out,
                        fixed = TRUE)))
  expect_true(any(grepl("^sex=F +1377 +426 ", out)))
  expect_true(any(grepl("At each threshold (everyone):", out, fixed = TRUE)))
  expect_true(any(grepl("hospital-a: n 1319, events 466, AUC 0.672", out, fixed = TRUE)))
  expect_true(any(grepl("Nodes: 3 of 3 answered (hospital-a, hospital-b, hospital-c)", out, fixed = TRUE)))
})
