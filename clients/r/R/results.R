# Printing and converting counts, summaries and tables, and the provenance
# footer every result prints.

# A pooled cell: its count, or NA when withheld.
cell_count <- function(cell) {
  if (is.null(cell$count)) NA_real_ else as.numeric(cell$count)
}

cell_text <- function(cell) {
  if (!is.null(cell$count)) return(format(cell$count))
  parts <- "suppressed"
  if (length(cell$suppressed_at)) {
    parts <- paste0(parts, " at ", paste(unlist(cell$suppressed_at), collapse = ", "))
  }
  if (!is.null(cell$at_least)) parts <- paste0(parts, "; at least ", cell$at_least)
  parts
}

#' Provenance of a result
#'
#' Which nodes answered, and what the query cost.
#'
#' @param x A result from a `px_*` query function.
#' @return A data frame, one row per node: `node`, `status` (answered,
#'   suppressed, missing, refused, failed), `code`, `detail`; attributes
#'   `answered`, `min_nodes`, `min_cell_size`, `privacy`.
#' @export
px_provenance <- function(x) {
  p <- x$provenance
  nodes <- p$nodes %||% list()
  out <- data.frame(node = chr(nodes, "node"), status = chr(nodes, "status"),
                    code = chr(nodes, "code"), detail = chr(nodes, "detail"),
                    stringsAsFactors = FALSE)
  attr(out, "answered") <- p$answered
  attr(out, "min_nodes") <- p$min_nodes
  attr(out, "min_cell_size") <- p$min_cell_size
  attr(out, "privacy") <- x$privacy
  out
}

print_provenance <- function(x) {
  p <- x$provenance
  nodes <- p$nodes %||% list()
  answered <- vapply(nodes, function(n) n$status %in% c("answered", "suppressed"), logical(1))
  cat(sprintf("\nNodes: %s of %d answered (%s); min cell size %s\n",
              p$answered %||% sum(answered), length(nodes),
              paste(chr(nodes[answered], "node"), collapse = ", "), p$min_cell_size %||% "?"))
  for (n in nodes[!answered]) {
    cat(sprintf("  %s: %s%s\n", n$node, n$status,
                if (is.null(n$detail)) "" else paste0(" (", n$detail, ")")))
  }
  for (note in unlist(p$notes)) cat("  note:", note, "\n")
  pr <- x$privacy
  if (is.null(pr)) {
    cat("Privacy: not stated\n")
  } else if (isTRUE(pr$exact)) {
    cat("Privacy: exact study (no noise, no budget)\n")
  } else {
    cat(sprintf("Privacy: cost rho %s (charged %s%s); budget left rho %s of %s (epsilon spent %s at delta %s)\n",
                fmt(pr$cost_rho), fmt(pr$charged_rho), if (isTRUE(pr$cached)) ", cached answer" else "",
                fmt(pr$remaining_rho), fmt(pr$budget_rho), fmt(pr$epsilon_spent), fmt(pr$delta)))
    if (!is.null(pr$count_noise_sd)) cat(sprintf("  noise sd of a count: %s\n", fmt(pr$count_noise_sd)))
    for (note in unlist(pr$notes)) cat("  note:", note, "\n")
  }
  cat(sprintf("Study %s, query %s\n", x$study_id %||% "?", x$query_id %||% "?"))
  invisible(x)
}

#' @export
print.px_result <- function(x, ...) {
  cat("Plexus result of kind", x$value$kind, "\n")
  cat(jsonlite::toJSON(x$value, auto_unbox = TRUE, pretty = TRUE, digits = NA, null = "null"), "\n")
  print_provenance(x)
}

#' @export
print.px_count <- function(x, ...) {
  cat(sprintf("Count: %s\n", cell_text(x$value$n)))
  print_by_site(x, function(v) cell_text(v$n))
  print_provenance(x)
}

#' @export
as.double.px_count <- function(x, ...) cell_count(x$value$n)

#' @export
as.data.frame.px_count <- function(x, ...) {
  data.frame(n = cell_count(x$value$n), suppressed = is.null(x$value$n$count))
}

summary_row <- function(v) {
  ci <- unlist(v$ci)
  data.frame(n = as.numeric(v$n %||% NA), mean = as.numeric(v$mean %||% NA),
             sd = as.numeric(v$sd %||% NA),
             ci_lower = if (length(ci) == 2) ci[[1]] else NA_real_,
             ci_upper = if (length(ci) == 2) ci[[2]] else NA_real_)
}

#' @export
as.data.frame.px_summary <- function(x, ...) {
  cbind(data.frame(variable = x$value$variable, stringsAsFactors = FALSE), summary_row(x$value))
}

#' @export
print.px_summary <- function(x, ...) {
  v <- x$value
  cat(sprintf("Summary of %s\n", v$variable))
  row <- summary_row(v)
  names(row) <- c("n", "mean", "sd", "2.5 %", "97.5 %")
  print(row, row.names = FALSE, digits = 6)
  if (!is.null(v$noise_sd)) cat(sprintf("noise sd of the mean: %s\n", fmt(v$noise_sd)))
  print_by_site(x, function(s) sprintf("n %s, mean %s", s$n, fmt(s$mean, 6)))
  print_provenance(x)
}

#' @export
print.px_summary_by <- function(x, ...) {
  cat(sprintf("Summary of %s by %s\n", attr(x, "variable"), attr(x, "by")))
  df <- x
  class(df) <- "data.frame"
  if (all(is.na(df$note))) df$note <- NULL
  print(df, row.names = FALSE, digits = 6)
  invisible(x)
}

#' @export
as.matrix.px_table <- function(x, ...) {
  v <- x$value
  m <- t(vapply(v$cells, function(row) vapply(row, cell_count, numeric(1)),
                numeric(length(v$column_levels))))
  if (length(v$column_levels) == 1) m <- t(m)
  dimnames(m) <- stats::setNames(list(unlist(v$row_levels), unlist(v$column_levels)),
                                 c(v$row, v$column))
  m
}

#' @export
as.data.frame.px_table <- function(x, ...) {
  v <- x$value
  rows <- unlist(v$row_levels)
  cols <- unlist(v$column_levels)
  out <- expand.grid(column = cols, row = rows, stringsAsFactors = FALSE)[, c("row", "column")]
  cells <- unlist(v$cells, recursive = FALSE)
  out$count <- vapply(cells, cell_count, numeric(1))
  out$suppressed <- vapply(cells, function(c) is.null(c$count), logical(1))
  names(out)[1:2] <- c(v$row, v$column)
  out
}

#' @export
print.px_table <- function(x, ...) {
  v <- x$value
  m <- vapply(unlist(v$cells, recursive = FALSE), function(c) {
    if (is.null(c$count)) "<k" else format(c$count)
  }, character(1))
  m <- matrix(m, nrow = length(v$row_levels), byrow = TRUE,
              dimnames = stats::setNames(list(unlist(v$row_levels), unlist(v$column_levels)),
                                         c(v$row, v$column)))
  print(noquote(m), right = TRUE)
  if (any(m == "<k")) cat("<k: suppressed (under the minimum cell size at some node)\n")
  print_provenance(x)
}

print_by_site <- function(x, describe) {
  if (!length(x$by_site)) return(invisible())
  cat("By site:\n")
  for (s in x$by_site) {
    cat(sprintf("  %s: %s\n", s$node,
                if (!is.null(s$value)) describe(s$value) else paste("no answer:", s$error)))
  }
}
