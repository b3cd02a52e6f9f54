# Against `plexus demo --serve` (PLEXUS_BIN): the exact study's answers equal
# R's own on the reference rows, errors arrive as their condition classes,
# TLS problems are named, and R and the CLI agree to the last digit.

covariates <- "age + sex + smoking + diabetes"

test_that("the demo's studies are listed", {
  l <- live_demo()
  st <- px_studies(l$con)
  expect_true(all(c(l$exact, l$private) %in% st$id))
  expect_true(st$exact[st$id == l$exact])
  expect_false(st$exact[st$id == l$private])
  d <- px_dictionary(l$con)
  expect_true(all(c("age", "sex", "smoking", "diabetes", "death", "followup_days") %in% d$name))
})

test_that("a count in the exact study is the number of reference rows", {
  l <- live_demo()
  ref <- reference_data(l)
  expect_equal(as.numeric(px_count(l$con, l$exact)), nrow(ref))
  expect_equal(as.numeric(px_count(l$con, l$exact, where = ~ age >= 65 & sex == "M")),
               sum(ref$age >= 65 & ref$sex == "M", na.rm = TRUE))
})

# Estimates, standard errors, deviances and degrees of freedom equal
# glm()'s at its default convergence: the coordinator reports the
# covariance as glm.fit does, from the weights of the last IRLS step.
check_glm <- function(fit, f, family, data) {
  rfit <- stats::glm(f, family = family, data = data)
  td <- tidy(fit)
  rs <- summary(rfit)$coefficients
  expect_equal(r_term(td$term), rownames(rs))
  expect_relative(td$estimate, unname(rs[, "Estimate"]), label = "estimates")
  expect_relative(td$std.error, unname(rs[, "Std. Error"]), label = "standard errors")
  gl <- glance(fit)
  expect_relative(gl$deviance, rfit$deviance, label = "deviance")
  expect_relative(gl$null.deviance, rfit$null.deviance, label = "null deviance")
  expect_equal(gl$df.residual, rfit$df.residual)
  expect_equal(gl$nobs, nobs(rfit))
}

test_that("a gaussian GLM equals glm() on the reference rows", {
  l <- live_demo()
  ref <- reference_data(l)
  f <- stats::as.formula(paste("sbp ~", covariates, "+ bmi"))
  fit <- px_glm(l$con, f, family = "gaussian", study = l$exact)
  check_glm(fit, f, gaussian(), ref)
  rfit <- stats::glm(f, family = gaussian(), data = ref)
  expect_relative(glance(fit)$dispersion, summary(rfit)$dispersion, label = "dispersion")
})

test_that("a binomial GLM equals glm() on the reference rows", {
  l <- live_demo()
  ref <- reference_data(l)
  f <- stats::as.formula(paste("death ~", covariates))
  fit <- px_glm(l$con, f, family = binomial(), study = l$exact)
  check_glm(fit, f, binomial(), ref)
  expect_equal(tidy(fit, exponentiate = TRUE)$estimate, exp(tidy(fit)$estimate), tolerance = 1e-12)
})

test_that("a binomial GLM on a cohort equals glm() on the same rows", {
  l <- live_demo()
  ref <- reference_data(l)
  f <- death ~ age + diabetes
  fit <- px_glm(l$con, f, family = "binomial", study = l$exact, where = ~ sex == "M" & age >= 60)
  check_glm(fit, f, binomial(), subset(ref, sex == "M" & age >= 60))
})

# A daily grid passes through every distinct follow-up time, so the curves
# are the product-limit estimate itself; on a coarser grid each interval's
# deaths are set against those at risk at its start (see the query format).
test_that("Kaplan-Meier curves on a daily grid equal survfit at the grid times", {
  skip_if_not_installed("survival")
  l <- live_demo()
  ref <- reference_data(l)
  km <- px_km(l$con, Surv(followup_days, death) ~ diabetes, study = l$exact, grid = c(0, 1826, 1))
  td <- tidy(km)
  rfit <- survival::survfit(survival::Surv(followup_days, death) ~ diabetes,
                            data = subset(ref, followup_days > 0))
  for (level in c("FALSE", "TRUE")) {
    ours <- td[td$strata == paste0("diabetes=", tolower(level)) & !is.na(td$estimate), ]
    expect_gt(nrow(ours), 10)
    rs <- summary(rfit[paste0("diabetes=", level)], times = ours$time, extend = TRUE)
    expect_equal(rs$time, ours$time)
    expect_relative(ours$estimate, rs$surv, label = paste("survival, diabetes", level))
    se <- !is.na(ours$std.error)
    expect_relative(ours$std.error[se], rs$std.err[se], label = paste("standard error, diabetes", level))
    if (grepl("log", km$value$confidence)) {
      expect_relative(ours$conf.low[se], rs$lower[se], label = "lower")
      expect_relative(ours$conf.high[se], rs$upper[se], label = "upper")
    }
  }
  expect_true(is.finite(km$value$log_rank$chi_square))
  pdf(NULL)
  on.exit(dev.off())
  expect_invisible(plot(km))
})

test_that("a Cox fit equals coxph with strata(site) and Efron ties", {
  skip_if_not_installed("survival")
  l <- live_demo()
  ref <- reference_data(l)
  fit <- px_cox(l$con, stats::as.formula(paste("Surv(followup_days, death) ~", covariates)),
                study = l$exact)
  f <- stats::as.formula(paste("Surv(followup_days, death) ~", covariates, "+ strata(site)"),
                         env = list2env(list(Surv = survival::Surv, strata = survival::strata)))
  rfit <- survival::coxph(f, data = ref, ties = "efron")
  td <- tidy(fit)
  expect_equal(r_term(td$term), names(stats::coef(rfit)))
  expect_relative(td$estimate, unname(stats::coef(rfit)), label = "coefficients")
  expect_relative(td$std.error, unname(sqrt(diag(stats::vcov(rfit)))), label = "standard errors")
  expect_relative(fit$value$loglik, rfit$loglik[2], label = "log partial likelihood")
  expect_relative(tidy(fit, exponentiate = TRUE)$estimate, unname(exp(stats::coef(rfit))), label = "hazard ratios")
  expect_equal(glance(fit)$nevent, rfit$nevent)
})

# The error object the coordinator sends for a query, read without the
# package's error handling.
raw_error <- function(con, study, body) {
  resp <- con$transport("POST", paste0(con$url, "/v1/studies/", study, "/queries"), body, con)
  parsed <- jsonlite::fromJSON(resp$body, simplifyVector = FALSE)
  if (resp$status >= 300) return(parsed$error)
  repeat {
    r <- con$transport("GET", paste0(con$url, "/v1/queries/", parsed$query_id, "?wait_ms=10000"), NULL, con)
    q <- jsonlite::fromJSON(r$body, simplifyVector = FALSE)
    if (!identical(q$status, "pending")) return(q$error)
  }
}

test_that("each failure arrives as its condition class with the coordinator's message", {
  l <- live_demo()
  cases <- list(
    list(con = l$con, study = l$exact, where = "sbpp > 120", class = "plexus_invalid_error", word = "sbpp"),
    list(con = px_connect(connect_file = l$connect_file, role = "outsider"), study = l$exact,
         where = NULL, class = "plexus_policy_error", word = l$exact),
    list(con = l$con, study = "no-such-study", where = NULL, class = "plexus_not_found_error",
         word = "no-such-study"))
  for (case in cases) {
    err <- expect_error(px_count(case$con, case$study, where = case$where), class = case$class)
    expect_s3_class(err, c("plexus_error", "error", "condition"))
    expect_match(conditionMessage(err), case$word, fixed = TRUE)
    body <- plexus:::query_body(list(count = plexus:::empty_object()), case$where,
                                syntax = plexus:::query_syntax(case$con))
    expect_equal(conditionMessage(err), raw_error(case$con, case$study, body)$message)
  }
})

test_that("a tiny cohort is refused or suppressed in the exact study, noised in the private one", {
  l <- live_demo()
  tiny <- "age >= 104 & sex == \"F\" & diabetes == TRUE"
  # The exact study decides on exact counts: never released.
  res <- tryCatch(px_count(l$con, l$exact, where = tiny),
                  plexus_disclosure_error = function(e) e)
  if (inherits(res, "error")) {
    expect_true(nzchar(conditionMessage(res)))
  } else {
    expect_true(is.na(as.numeric(res)))
    expect_true(as.data.frame(res)$suppressed)
  }
  # Under differential privacy the rule decides on the noised counts, so a
  # noised number may come back; it carries its noise and its charge.
  res <- tryCatch(px_count(l$con, l$private, where = tiny),
                  plexus_disclosure_error = function(e) e)
  if (inherits(res, "error")) {
    expect_true(nzchar(conditionMessage(res)))
  } else if (!isTRUE(as.data.frame(res)$suppressed)) {
    pr <- attr(px_provenance(res), "privacy")
    expect_gt(pr$count_noise_sd, 0)
    expect_gt(pr$charged_rho, 0)
  }
})

test_that("an expired client certificate and a wrong CA are named", {
  skip_if_not(nzchar(Sys.which("openssl")), "the openssl command is not installed")
  l <- live_demo()
  pki <- l$cf$pki
  dir <- withr::local_tempdir()
  file.copy(file.path(pki, "ca.pem"), dir)
  file.copy(file.path(pki, "ca.key"), dir)
  make_cert(dir, "alice", expired = TRUE)
  url <- l$cf$url
  # Caught here before any handshake...
  err <- expect_error(px_connect(url = url, ca = l$cf$ca, cert = file.path(dir, "alice.pem"),
                                 key = file.path(dir, "alice.key")),
                      class = "plexus_connection_error")
  expect_match(conditionMessage(err), "alice.pem .* expired on 2020-02-01")
  # ...and by the coordinator when the local check is bypassed.
  con <- px_connect(url = url, ca = l$cf$ca, cert = file.path(dir, "alice.pem"),
                    key = file.path(dir, "alice.key"), check = FALSE,
                    transport = plexus:::httr2_transport)
  err <- expect_error(px_studies(con), class = "plexus_connection_error")
  expect_match(conditionMessage(err), "alice.pem", fixed = TRUE)
  # A CA that did not sign the coordinator's certificate.
  other <- withr::local_tempdir()
  make_ca(other)
  researcher <- l$cf$identities$researcher
  err <- expect_error(px_connect(url = url, ca = file.path(other, "ca.pem"), cert = researcher$cert,
                                 key = researcher$key),
                      class = "plexus_connection_error")
  expect_match(conditionMessage(err), paste("not signed by the CA in", normalizePath(file.path(other, "ca.pem"))),
               fixed = TRUE)
  # A client certificate from another CA.
  make_cert(other, "mallory")
  err <- expect_error(px_connect(url = url, ca = l$cf$ca, cert = file.path(other, "mallory.pem"),
                                 key = file.path(other, "mallory.key")),
                      class = "plexus_connection_error")
  expect_match(conditionMessage(err), "mallory.pem", fixed = TRUE)
})

test_that("R and the CLI give the same numbers to the last digit", {
  l <- live_demo()
  query <- list(analysis = list(glm = list(family = "binomial", outcome = "death",
                                           covariates = list("age", "sex", "smoking", "diabetes"))))
  file <- tempfile(fileext = ".json")
  writeLines(json(query), file)
  researcher <- l$cf$identities$researcher
  out <- suppressWarnings(system2(l$bin, shQuote(c(cli_connection_args(l), "query", "--study", l$exact,
                                                  "--file", file, "--output", "json")),
                                  stdout = TRUE, stderr = FALSE))
  expect_null(attr(out, "status"))
  cli <- jsonlite::fromJSON(paste(out, collapse = "\n"), simplifyVector = FALSE)
  fit <- px_glm(l$con, death ~ age + sex + smoking + diabetes, family = "binomial", study = l$exact)
  ours <- fit$value$coefficients
  for (field in c("estimate", "std_error", "statistic", "p_value", "ci_lower", "ci_upper")) {
    expect_identical(vapply(cli$value$coefficients, `[[`, numeric(1), field),
                     vapply(ours, `[[`, numeric(1), field), label = field)
  }
  expect_identical(vapply(cli$value$coefficients, function(c) c$ratio$estimate, numeric(1)),
                   vapply(ours, function(c) c$ratio$estimate, numeric(1)), label = "odds ratios")
  expect_identical(cli$value$deviance, glance(fit)$deviance)
})

test_that("the budget and the audit log are read by their roles", {
  l <- live_demo()
  px_count(l$con, l$private, where = ~ age >= 60)
  b <- px_budget(l$con, l$private)
  expect_false(b$exact)
  expect_gt(b$spent_rho, 0)
  expect_equal(b$remaining_rho, b$budget_rho - b$spent_rho, tolerance = 1e-9)
  auditor <- px_connect(connect_file = l$connect_file, role = "auditor")
  log <- px_audit_log(auditor, study_id = l$private, limit = 50)
  expect_gt(nrow(log), 0)
  expect_true("alice" %in% log$who)
  expect_s3_class(log$at, "POSIXct")
  expect_error(px_audit_log(l$con), class = "plexus_policy_error")
})
