# Records the coordinator's QueryResult JSON for a few queries into
# tests/testthat/fixtures/live_*.json, so the offline tests print and tidy
# real answers:
#   Rscript clients/r/tools/record-fixtures.R DIR/connect.json [text|tree]
# (from a `plexus demo --serve --dir DIR`; needs the package installed;
# `tree` for a coordinator without the text syntax).

library(plexus)
args <- commandArgs(trailingOnly = TRUE)
if (!length(args) %in% 1:2) stop("usage: record-fixtures.R DIR/connect.json [text|tree]")
here <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(), value = TRUE))))
out <- file.path(here, "..", "tests", "testthat", "fixtures")
cf <- jsonlite::fromJSON(args[[1]])
con <- px_connect(connect_file = args[[1]], role = "researcher",
                  syntax = if (length(args) == 2) args[[2]] else "text")
exact <- cf$studies$exact
private <- cf$studies$private

record <- function(name, study, analysis, where = NULL) {
  body <- plexus:::query_body(analysis, where, syntax = con$syntax)
  resp <- con$transport("POST", paste0(con$url, "/v1/studies/", study, "/queries"), body, con)
  if (resp$status != 202) stop(name, ": ", resp$body)
  id <- jsonlite::fromJSON(resp$body)$query_id
  repeat {
    r <- con$transport("GET", paste0(con$url, "/v1/queries/", id, "?wait_ms=30000"), NULL, con, timeout = 60)
    if (!identical(jsonlite::fromJSON(r$body)$status, "pending")) break
  }
  pretty <- jsonlite::prettify(r$body, indent = 1)
  writeLines(pretty, file.path(out, paste0("live_", name, ".json")))
  cat("recorded", name, "\n")
}

record("count", private, list(count = plexus:::empty_object()), "age >= 65")
record("glm_binomial", exact, list(glm = list(formula = "death ~ age + sex + smoking + diabetes",
                                              family = "binomial")))
record("glm_gaussian", private, list(glm = list(formula = "sbp ~ age + sex", family = "gaussian")))
record("cox", exact, list(cox = list(formula = "Surv(followup_days, death) ~ age + sex + smoking + diabetes")))
record("km", exact, list(kaplan_meier = list(formula = "Surv(followup_days, death) ~ diabetes",
                                             grid = list(from = 0, to = 1826, step = 30))))
record("table", exact, list(table = list(row = "smoking", column = "death")))
record("summary", exact, list(summary = list(variable = "bmi")))
