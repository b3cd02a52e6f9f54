test_that("a count posts the cohort text and polls for the result", {
  con <- fake_connection(answering(fixture("count.json")))
  res <- px_count(con, "aaa-outcomes", where = "age >= 65", rho = 0.01)
  reqs <- requests(con)
  expect_equal(reqs[[1]]$method, "POST")
  expect_equal(reqs[[1]]$path, "/v1/studies/aaa-outcomes/queries")
  expect_equal(jsonlite::fromJSON(reqs[[1]]$body, simplifyVector = FALSE),
               list(where = "age >= 65", analysis = list(count = structure(list(), names = character(0))),
                    rho = 0.01))
  expect_match(reqs[[1]]$body, '"count":{}', fixed = TRUE)
  expect_equal(reqs[[2]]$method, "GET")
  expect_match(reqs[[2]]$path, "^/v1/queries/q1\\?wait_ms=[0-9]+$")
  expect_s3_class(res, "px_count")
  expect_equal(as.numeric(res), 1234)
  expect_equal(res$query_id, "q-count")
})

test_that("a one-sided formula is a cohort", {
  con <- fake_connection(answering(fixture("count.json")))
  px_count(con, "s", where = ~ age >= 65 & smoking %in% c("former", "current") & !is.na(bmi),
           by_site = TRUE)
  body <- posted(con)[[1]]
  expect_equal(body$where, 'age >= 65 & smoking %in% c("former", "current") & !is.na(bmi)')
  expect_true(body$by_site)
  expect_null(body$rho)
})

test_that("a glm sends the formula text and the family's name", {
  con <- fake_connection(answering(fixture("glm_binomial.json")))
  px_glm(con, death ~ age + diabetes + smoking, family = binomial(), study = "aaa-validation")
  px_glm(con, "sbp ~ age - 1", study = "aaa-validation", where = 'sex == "M"')
  px_glm(con, death ~ age, family = binomial, study = "aaa-validation")
  b <- posted(con)
  expect_equal(b[[1]]$analysis, list(glm = list(formula = "death ~ age + diabetes + smoking",
                                                family = "binomial")))
  expect_equal(b[[2]]$analysis$glm, list(formula = "sbp ~ age - 1", family = "gaussian"))
  expect_equal(b[[2]]$where, 'sex == "M"')
  expect_equal(b[[3]]$analysis$glm$family, "binomial")
})

test_that("a non-canonical link is refused before sending", {
  con <- fake_connection(answering(fixture("glm_binomial.json")))
  expect_error(px_glm(con, death ~ age, family = binomial(link = "probit"), study = "s"),
               class = "plexus_invalid_error", regexp = "canonical link")
  expect_length(requests(con), 0)
})

test_that("cox and kaplan-meier send their formula, ties and grid", {
  con <- fake_connection(answering(fixture("cox.json")))
  px_cox(con, survival::Surv(followup_days, death) ~ age + diabetes, study = "s", ties = "breslow")
  px_cox(con, "Surv(followup_days, death) ~ age", study = "s")
  px_km(con, Surv(followup_days, death) ~ diabetes, study = "s")
  px_km(con, Surv(followup_days, death) ~ 1, study = "s", grid = I(c(0, 365, 730)))
  b <- posted(con)
  expect_equal(b[[1]]$analysis$cox,
               list(formula = "Surv(followup_days, death) ~ age + diabetes", ties = "breslow"))
  expect_equal(b[[2]]$analysis$cox, list(formula = "Surv(followup_days, death) ~ age"))
  expect_equal(b[[3]]$analysis$kaplan_meier,
               list(formula = "Surv(followup_days, death) ~ diabetes",
                    grid = list(from = 0, to = 1826, step = 30)))
  expect_equal(b[[4]]$analysis$kaplan_meier$grid, list(0, 365, 730))
})

test_that("a summary by a variable asks one query per level", {
  dict <- fixture("dictionary.json")
  sum <- fixture("summary.json")
  con <- fake_connection(function(method, path, body) {
    if (path == "/v1/dictionary") return(list(status = 200, body = dict))
    if (method == "POST") {
      if (grepl("current", body)) {
        return(list(status = 422, body = error_body("disclosure", "cohort under the minimum cell size")))
      }
      return(list(status = 202, body = '{"query_id": "q1"}'))
    }
    list(status = 200, body = sum)
  })
  by <- px_summary(con, "s", "bmi", where = "age >= 65", by = "smoking")
  wheres <- vapply(posted(con), function(b) b$where, character(1))
  expect_equal(wheres, c('(age >= 65) & smoking == "never"', '(age >= 65) & smoking == "former"',
                         '(age >= 65) & smoking == "current"'))
  expect_s3_class(by, "px_summary_by")
  expect_equal(by$smoking, c("never", "former", "current"))
  expect_equal(by$mean, c(27.31, 27.31, NA))
  expect_match(by$note[3], "minimum cell size")
  expect_output(print(by), "Summary of bmi by smoking")
  px_summary(con, "s", "bmi", by = "diabetes")
  expect_equal(vapply(posted(con)[4:5], function(b) b$where, character(1)),
               c("diabetes == FALSE", "diabetes == TRUE"))
})

test_that("polling continues while the query is pending and gives up at the timeout", {
  polls <- 0
  con <- fake_connection(function(method, path, body) {
    if (method == "POST") return(list(status = 202, body = '{"query_id": "q9", "status": "pending"}'))
    polls <<- polls + 1
    if (polls < 3) return(list(status = 200, body = '{"query_id": "q9", "status": "pending"}'))
    list(status = 200, body = fixture("count.json"))
  })
  expect_equal(as.numeric(px_count(con, "s")), 1234)
  expect_equal(polls, 3)
  stuck <- fake_connection(function(method, path, body) {
    if (method == "POST") return(list(status = 202, body = '{"query_id": "q9", "status": "pending"}'))
    list(status = 200, body = '{"query_id": "q9", "status": "pending"}')
  })
  expect_error(px_count(stuck, "s", timeout = 0), class = "plexus_timeout_error",
               regexp = 'px_result\\(con, "q9"\\)')
})

test_that("studies, dictionary, budget and audit log decode into data frames", {
  con <- fake_connection(function(method, path, body) {
    b <- switch(sub("\\?.*", "", path),
      "/v1/studies" = json(list(studies = list(list(
        id = "aaa-validation", title = "Validation", purpose = list(code = "x"),
        variables = list("age", "death"), analyses = list("count", "glm"), researchers = list("alice"),
        nodes = list("hospital-a", "hospital-b"), min_nodes = 2,
        privacy = list(exact = TRUE, budget_rho = 0, query_rho = 0, delta = 0))))),
      "/v1/dictionary" = fixture("dictionary.json"),
      "/v1/studies/aaa-outcomes/budget" = json(list(
        study_id = "aaa-outcomes", exact = FALSE, budget_rho = 1, spent_rho = 0.25, remaining_rho = 0.75,
        delta = 1e-6, epsilon_spent = 2.5, epsilon_budget = 6.1, queries_charged = 5,
        nodes = list(list(node_id = "hospital-a", spent_rho = 0.25, budget_rho = 1, updated_unix_ms = 1796000000000)))),
      "/v1/audit/events" = json(list(events = list(list(
        seq = 7, at_unix_ms = 1796000000000, who = "alice", role = "researcher", action = "query_submitted",
        study_id = "aaa-outcomes", query_id = "q1", job_id = NULL, node_id = NULL, query_hash = "ab",
        outcome = "ok", detail = "", purpose = "x", nodes = list("hospital-a", "hospital-b"),
        result_size = NULL, suppressed = FALSE, privacy_cost = 0.01, privacy_remaining = 0.99)))))
    list(status = 200, body = b)
  })
  st <- px_studies(con)
  expect_equal(st$id, "aaa-validation")
  expect_true(st$exact)
  expect_equal(st$nodes, "hospital-a, hospital-b")
  d <- px_dictionary(con)
  expect_equal(d$type[d$name == "smoking"], "categorical")
  expect_equal(attr(d, "levels")$smoking, c("never", "former", "current"))
  b <- px_budget(con, "aaa-outcomes")
  expect_equal(b$remaining_rho, 0.75)
  expect_equal(b$nodes$node_id, "hospital-a")
  expect_output(print(b), "spent rho 0.25 of 1")
  a <- px_audit_log(con, study_id = "aaa-outcomes", since = as.POSIXct("2026-12-01", tz = "UTC"), limit = 10)
  last <- requests(con)[[length(requests(con))]]$path
  expect_equal(last, "/v1/audit/events?study_id=aaa-outcomes&since_unix_ms=1796083200000&limit=10")
  expect_equal(a$seq, 7)
  expect_equal(a$nodes, "hospital-a, hospital-b")
  expect_true(is.na(a$job_id))
  expect_s3_class(a$at, "POSIXct")
})

test_that("any analysis goes through px_query and prints in its raw form", {
  hist <- json(list(query_id = "qh", study_id = "s", status = "succeeded", error = NULL,
                    result = list(value = list(kind = "histogram", variable = "age", edges = c(40, 60, 80),
                                               bins = list(list(count = 10), list(suppressed_at = list("hospital-a"))),
                                               below = list(), above = list()),
                                  provenance = list(nodes = list(list(node = "hospital-a", status = "answered")),
                                                    answered = 1, min_nodes = 1, min_cell_size = 5))))
  con <- fake_connection(answering(hist))
  h <- px_query(con, "s", list(histogram = list(variable = "age", edges = c(40, 60, 80))))
  expect_equal(posted(con)[[1]]$analysis$histogram$edges, list(40, 60, 80))
  expect_s3_class(h, c("px_histogram", "px_result"))
  expect_equal(h$value$bins[[1]]$count, 10)
  expect_output(print(h), "Plexus result of kind histogram")
})

test_that("with syntax = \"tree\" R parses cohorts and formulas into the query tree", {
  con <- fake_connection(answering(fixture("glm_binomial.json")))
  con$syntax <- "tree"
  px_glm(con, death ~ age + smoking - 1, family = "binomial", study = "s",
         where = ~ age >= 65 & (sex == "M" | !is.na(bmi)) & smoking %in% c("never", "former") & !(diabetes == TRUE) & x > -2)
  px_cox(con, Surv(followup_days, death) ~ age, study = "s", ties = "breslow")
  px_km(con, Surv(followup_days, death) ~ diabetes, study = "s", where = ~ is.na(bmi))
  px_km(con, Surv(followup_days, death) ~ 1, study = "s")
  b <- posted(con)
  expect_null(b[[1]]$where)
  expect_equal(b[[1]]$analysis$glm, list(family = "binomial", outcome = "death",
                                         covariates = list("age", "smoking"), intercept = FALSE))
  expect_equal(b[[1]]$cohort, list(and = list(
    list(compare = list(variable = "age", op = ">=", value = 65)),
    list(or = list(list(compare = list(variable = "sex", op = "==", value = "M")),
                   list(not_null = list(variable = "bmi")))),
    list("in" = list(variable = "smoking", values = list("never", "former"))),
    list(not = list(compare = list(variable = "diabetes", op = "==", value = TRUE))),
    list(compare = list(variable = "x", op = ">", value = -2)))))
  expect_equal(b[[2]]$analysis$cox, list(time = "followup_days", event = "death",
                                         covariates = list("age"), ties = "breslow"))
  expect_equal(b[[3]]$analysis$kaplan_meier$group, "diabetes")
  expect_equal(b[[3]]$cohort, list(is_null = list(variable = "bmi")))
  expect_null(b[[4]]$analysis$kaplan_meier$group)
  px_count(con, "s", where = "65 <= age & diabetes")
  expect_equal(posted(con)[[5]]$cohort, list(and = list(
    list(compare = list(variable = "age", op = ">=", value = 65)),
    list(compare = list(variable = "diabetes", op = "==", value = TRUE)))))
  expect_error(px_glm(con, death ~ age * sex, study = "s"), class = "plexus_invalid_error",
               regexp = "age \\* sex is not a dictionary variable")
})

test_that("with syntax = \"auto\" a coordinator without the text syntax gets the tree from then on", {
  con <- fake_connection(function(method, path, body) {
    if (method == "POST" && grepl('"where"', body)) {
      return(list(status = 400, body = error_body("invalid",
        "query is not valid JSON for a Plexus query: unknown field `where`, expected one of `cohort`, `analysis`")))
    }
    if (method == "POST") return(list(status = 202, body = '{"query_id": "q1"}'))
    list(status = 200, body = fixture("count.json"))
  })
  con$syntax <- "auto"
  expect_equal(as.numeric(px_count(con, "s", where = "age >= 65")), 1234)
  expect_equal(as.numeric(px_count(con, "s", where = "age >= 70")), 1234)
  b <- posted(con)
  expect_length(b, 3)
  expect_equal(b[[1]]$where, "age >= 65")
  expect_equal(b[[2]]$cohort, list(compare = list(variable = "age", op = ">=", value = 65)))
  expect_equal(b[[3]]$cohort, list(compare = list(variable = "age", op = ">=", value = 70)))
  # Another refusal is not retried.
  con2 <- fake_connection(function(method, path, body) {
    list(status = 400, body = error_body("invalid", 'variable "sbpp" is not in the data dictionary'))
  })
  con2$syntax <- "auto"
  expect_error(px_count(con2, "s", where = "sbpp > 1"), class = "plexus_invalid_error", regexp = "sbpp")
  expect_length(posted(con2), 1)
})
