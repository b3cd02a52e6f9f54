# Results recorded from a live demo network (tools/record-fixtures.R) print
# and tidy; skipped for a fixture not recorded yet.

recorded <- function(name, fun, ...) {
  path <- test_path("fixtures", paste0("live_", name, ".json"))
  skip_if_not(file.exists(path), paste(basename(path), "is not recorded yet"))
  con <- fake_connection(answering(paste(readLines(path, warn = FALSE), collapse = "\n")))
  fun(con, ...)
}

test_that("a recorded binomial GLM prints and tidies", {
  fit <- recorded("glm_binomial", px_glm, formula = death ~ age + sex + smoking + diabetes,
                  family = "binomial", study = "aaa-validation")
  out <- capture.output(print(fit))
  expect_true(any(grepl("Estimate Std. Error z value Pr(>|z|)", out, fixed = TRUE)))
  expect_true(any(grepl("Residual deviance:", out, fixed = TRUE)))
  td <- tidy(fit, exponentiate = TRUE)
  expect_equal(td$term[1:2], c("(Intercept)", "age"))
  expect_true(all(td$estimate > 0))
  expect_equal(glance(fit)$privacy.cost, 0)
})

test_that("a recorded Cox fit and Kaplan-Meier curves print and tidy", {
  cox <- recorded("cox", px_cox, formula = Surv(followup_days, death) ~ age + sex + smoking + diabetes,
                  study = "aaa-validation")
  expect_output(print(cox), "Likelihood ratio test=")
  expect_equal(nrow(tidy(cox)), 5)
  km <- recorded("km", px_km, formula = Surv(followup_days, death) ~ diabetes, study = "aaa-validation")
  td <- tidy(km)
  expect_equal(sort(unique(td$strata)), c("diabetes=false", "diabetes=true"))
  expect_true(all(diff(stats::na.omit(td$estimate[td$strata == "diabetes=false"])) <= 0))
  pdf(NULL)
  on.exit(dev.off())
  expect_invisible(plot(km))
})

test_that("recorded counts, tables and summaries print", {
  n <- recorded("count", px_count, study = "aaa-outcomes")
  expect_output(print(n), "Privacy: cost rho")
  tb <- recorded("table", px_table, study = "aaa-validation", row = "smoking", column = "death")
  expect_equal(dim(as.matrix(tb)), c(3, 2))
  s <- recorded("summary", px_summary, study = "aaa-validation", variable = "bmi")
  expect_output(print(s), "Summary of bmi")
})
