# The query's tree form, for a coordinator that does not read the text
# forms ("where", "formula") yet: R parses the cohort and the formula, and
# they are written as the JSON tree of docs/src/reference/query-format.md.
# Selected by px_connect(syntax = "tree"); "text" (the default) sends the
# text and lets the coordinator parse it, with its better messages.

tree_abort <- function(text, why) {
  px_abort("invalid", sprintf("cannot write `%s` as a query tree: %s", text, why))
}

# A cohort expression (text) as the cohort tree.
cohort_tree <- function(text) {
  expr <- tryCatch(str2lang(text), error = function(e) tree_abort(text, conditionMessage(e)))
  cohort_node(expr, text)
}

cohort_node <- function(e, text) {
  if (is.symbol(e)) {
    # A boolean variable on its own.
    return(list(compare = list(variable = as.character(e), op = "==", value = TRUE)))
  }
  if (!is.call(e)) tree_abort(text, "a condition is a comparison, %in%, is.na() or a combination with & | !")
  op <- as.character(e[[1]])
  switch(op,
    "(" = cohort_node(e[[2]], text),
    "&" = , "&&" = list(and = c(flatten_op(e, op, text))),
    "|" = , "||" = list(or = c(flatten_op(e, op, text))),
    "!" = {
      inner <- e[[2]]
      while (is.call(inner) && identical(as.character(inner[[1]]), "(")) inner <- inner[[2]]
      if (is.call(inner) && identical(as.character(inner[[1]]), "is.na")) {
        list(not_null = list(variable = variable_name(inner[[2]], text)))
      } else {
        list(not = cohort_node(inner, text))
      }
    },
    "is.na" = list(is_null = list(variable = variable_name(e[[2]], text))),
    "%in%" = list("in" = list(variable = variable_name(e[[2]], text),
                              values = literal_values(e[[3]], text))),
    "==" = , "!=" = , "<" = , "<=" = , ">" = , ">=" = {
      if (!is.symbol(e[[2]]) && is.symbol(e[[3]])) {
        # `65 <= age` is `age >= 65`.
        flipped <- c("==" = "==", "!=" = "!=", "<" = ">", "<=" = ">=", ">" = "<", ">=" = "<=")
        list(compare = list(variable = as.character(e[[3]]), op = flipped[[op]],
                            value = literal(e[[2]], text)))
      } else {
        list(compare = list(variable = variable_name(e[[2]], text), op = op,
                            value = literal(e[[3]], text)))
      }
    },
    tree_abort(text, sprintf("%s is not a cohort operator", op)))
}

flatten_op <- function(e, op, text) {
  parts <- list()
  for (side in list(e[[2]], e[[3]])) {
    if (is.call(side) && as.character(side[[1]]) %in% c(op, paste0(op, op))) {
      parts <- c(parts, flatten_op(side, op, text))
    } else {
      parts <- c(parts, list(cohort_node(side, text)))
    }
  }
  parts
}

variable_name <- function(e, text) {
  if (!is.symbol(e)) tree_abort(text, sprintf("%s is not a variable name", deparse_text(e)))
  as.character(e)
}

literal <- function(e, text) {
  if (is.call(e) && identical(as.character(e[[1]]), "-") && length(e) == 2 && is.numeric(e[[2]])) {
    return(-e[[2]])
  }
  if (is.numeric(e) || is.character(e) || is.logical(e)) {
    if (length(e) == 1 && !is.na(e)) return(e)
  }
  tree_abort(text, sprintf("%s is not a literal (a number, \"text\", TRUE or FALSE)", deparse_text(e)))
}

literal_values <- function(e, text) {
  if (is.call(e) && identical(as.character(e[[1]]), "c")) {
    return(lapply(as.list(e)[-1], literal, text = text))
  }
  list(literal(e, text))
}

# A model formula (text) as the analysis fields: outcome or time/event,
# covariates, intercept.
formula_tree <- function(text) {
  f <- tryCatch(str2lang(text), error = function(e) tree_abort(text, conditionMessage(e)))
  if (!is.call(f) || !identical(as.character(f[[1]]), "~") || length(f) != 3) {
    tree_abort(text, "a model formula is `outcome ~ terms`")
  }
  lhs <- f[[2]]
  out <- list()
  if (is.call(lhs) && identical(as.character(lhs[[1]]), "Surv")) {
    if (length(lhs) != 3) tree_abort(text, "Surv() takes a time and an event variable")
    out$time <- variable_name(lhs[[2]], text)
    out$event <- variable_name(lhs[[3]], text)
  } else {
    out$outcome <- variable_name(lhs, text)
  }
  terms <- list()
  intercept <- TRUE
  walk <- function(e, sign) {
    if (is.call(e) && identical(as.character(e[[1]]), "+") && length(e) == 3) {
      walk(e[[2]], sign)
      walk(e[[3]], sign)
    } else if (is.call(e) && identical(as.character(e[[1]]), "-") && length(e) == 3) {
      walk(e[[2]], sign)
      walk(e[[3]], -sign)
    } else if (is.call(e) && identical(as.character(e[[1]]), "(")) {
      walk(e[[2]], sign)
    } else if (is.numeric(e) && e %in% c(0, 1)) {
      if ((e == 0 && sign > 0) || (e == 1 && sign < 0)) intercept <<- FALSE
    } else if (is.symbol(e) && sign > 0) {
      terms[[length(terms) + 1]] <<- as.character(e)
    } else {
      tree_abort(text, sprintf("%s is not a dictionary variable", deparse_text(e)))
    }
  }
  walk(f[[3]], 1)
  out$covariates <- I(unlist(terms) %||% character(0))
  if (!intercept) out$intercept <- FALSE
  out
}

# The analysis and cohort in tree form.
to_tree <- function(analysis, where) {
  kind <- names(analysis)[1]
  a <- analysis[[1]]
  if (!is.null(a$formula)) {
    text <- a$formula
    f <- formula_tree(text)
    if (kind == "glm") {
      if (is.null(f$outcome)) tree_abort(text, "a glm has one outcome left of ~")
      a <- c(list(family = a$family, outcome = f$outcome, covariates = f$covariates),
             if (isFALSE(f$intercept)) list(intercept = FALSE))
    } else if (kind == "cox") {
      if (is.null(f$time)) tree_abort(text, "a cox model needs Surv(time, event) left of ~")
      ties <- a$ties
      a <- list(time = f$time, event = f$event, covariates = f$covariates)
      a$ties <- ties
    } else if (kind == "kaplan_meier") {
      if (is.null(f$time)) tree_abort(text, "Kaplan-Meier needs Surv(time, event) left of ~")
      a <- c(list(time = f$time, event = f$event),
             if (length(f$covariates) == 1) list(group = f$covariates[[1]]),
             list(grid = a$grid))
    }
    analysis[[1]] <- a
  }
  list(analysis = analysis, cohort = if (!is.null(where)) cohort_tree(where))
}
