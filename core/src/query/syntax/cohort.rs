//! Cohort expressions in R's notation, e.g.
//! `age >= 65 & smoking %in% c("former", "current") & !is.na(bmi)`.
//!
//! Precedence follows R, loosest first: `|`, `&`, `!`, comparisons,
//! `%in%`. So `!x == 1` is `!(x == 1)`, and `a | b & c` is `a | (b & c)`.

use chumsky::prelude::*;

use super::lex::{number, spanned_name, string, Extra};
use super::{at_column, grammar_error, precheck, Spanned};
use crate::dictionary::{Dictionary, VarType};
use crate::error::{Error, Result};
use crate::query::{Cohort, CompareOp, Value};

/// A cohort expression as written, before any name is resolved.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    Or(Vec<Spanned<Expr>>),
    And(Vec<Spanned<Expr>>),
    Not(Box<Spanned<Expr>>),
    Compare {
        left: Box<Spanned<Expr>>,
        op: Spanned<CompareOp>,
        right: Box<Spanned<Expr>>,
    },
    In {
        left: Box<Spanned<Expr>>,
        right: Box<Spanned<Expr>>,
    },
    Name(String),
    Number(String),
    Text(String),
    Call {
        name: Spanned<String>,
        args: Vec<Spanned<Expr>>,
    },
}

type Node = Spanned<Expr>;

fn refuse<'a>(
    message: &'static str,
) -> impl Fn(
    &'a str,
    &mut chumsky::input::MapExtra<'a, '_, &'a str, Extra<'a>>,
    &mut chumsky::input::Emitter<Rich<'a, char>>,
) -> &'a str
       + Clone {
    move |s, e, emitter| {
        emitter.emit(Rich::custom(e.span(), message));
        s
    }
}

fn grammar<'a>() -> impl Parser<'a, &'a str, Node, Extra<'a>> {
    recursive(|expr| {
        let args = expr
            .clone()
            .separated_by(just(',').padded())
            .collect::<Vec<_>>()
            .padded()
            .delimited_by(just('('), just(')'));
        let named = spanned_name()
            .then(text::inline_whitespace().ignore_then(args).or_not())
            .map(|(name, args)| match args {
                Some(args) => Expr::Call { name, args },
                None => Expr::Name(name.node),
            });
        let atom = choice((
            expr.clone()
                .padded()
                .delimited_by(just('('), just(')'))
                .map(|inner: Node| inner.node),
            number().map(Expr::Number),
            string().map(Expr::Text),
            named,
        ))
        .map_with(|node, e| Spanned {
            node,
            span: e.span().into_range(),
        })
        .labelled("a condition or a value")
        .padded()
        .boxed();

        // Only %in% among R's %op% operators.
        let special = just('%')
            .then(none_of("%\n ").repeated())
            .then(just('%'))
            .to_slice()
            .validate(|s: &str, e, emitter| {
                if s != "%in%" {
                    emitter.emit(Rich::custom(
                        e.span(),
                        "only the %in% operator is supported, e.g. smoking %in% c(\"former\", \"current\")",
                    ));
                }
            });
        let membership = atom
            .clone()
            .then(special.padded().ignore_then(atom.clone()).or_not())
            .map_with(|(left, right), e| match right {
                None => left,
                Some(right) => Spanned {
                    node: Expr::In {
                        left: Box::new(left),
                        right: Box::new(right),
                    },
                    span: e.span().into_range(),
                },
            });

        let op = choice((
            just("==").to(CompareOp::Eq),
            just("!=").to(CompareOp::Ne),
            just("<=").to(CompareOp::Le),
            just(">=").to(CompareOp::Ge),
            just("<-")
                .validate(refuse(
                    "<- is assignment in R; to compare with a negative number put a space between < and -",
                ))
                .to(CompareOp::Lt),
            just("=>")
                .validate(refuse("=> is not an operator; write >= for greater than or equal"))
                .to(CompareOp::Ge),
            just("=<")
                .validate(refuse("=< is not an operator; write <= for less than or equal"))
                .to(CompareOp::Le),
            just("<").to(CompareOp::Lt),
            just(">").to(CompareOp::Gt),
            just("=")
                .validate(refuse("= is assignment in R; write == to compare"))
                .to(CompareOp::Eq),
        ))
        .map_with(|node, e| Spanned {
            node,
            span: e.span().into_range(),
        })
        .labelled("a comparison (==, !=, <, <=, >, >=)")
        .padded();

        let comparison = membership
            .clone()
            .then(op.then(membership).or_not())
            .map_with(|(left, rest), e| match rest {
                None => left,
                Some((op, right)) => Spanned {
                    node: Expr::Compare {
                        left: Box::new(left),
                        op,
                        right: Box::new(right),
                    },
                    span: e.span().into_range(),
                },
            });

        let negation = just('!')
            .map_with(|_, e| -> std::ops::Range<usize> {
                let span: SimpleSpan = e.span();
                span.into_range()
            })
            .padded()
            .repeated()
            .foldr(comparison, |bang, inner: Node| Spanned {
                span: bang.start..inner.span.end,
                node: Expr::Not(Box::new(inner)),
            });

        let and_op = choice((
            just("&&").validate(refuse(
                "&& compares single values in R; write & to combine conditions",
            )),
            just("&"),
        ))
        .padded();
        let or_op = choice((
            just("||").validate(refuse(
                "|| compares single values in R; write | to combine conditions",
            )),
            just("|"),
        ))
        .padded();

        let conjunction = negation
            .separated_by(and_op)
            .at_least(1)
            .collect::<Vec<_>>()
            .map_with(|items, e| join(items, Expr::And, e.span().into_range()));
        conjunction
            .separated_by(or_op)
            .at_least(1)
            .collect::<Vec<_>>()
            .map_with(|items, e| join(items, Expr::Or, e.span().into_range()))
            .boxed()
    })
}

fn join(mut items: Vec<Node>, make: fn(Vec<Node>) -> Expr, span: std::ops::Range<usize>) -> Node {
    if items.len() == 1 {
        items.pop().expect("one item")
    } else {
        Spanned {
            node: make(items),
            span,
        }
    }
}

/// Parses a cohort expression into the cohort tree its JSON form gives,
/// checking every name, operator and literal against the dictionary.
/// Errors name the column of the text they are about.
pub fn parse_cohort(text: &str, dict: &Dictionary) -> Result<Cohort> {
    precheck("cohort expression", text)?;
    let syntax = grammar()
        .then_ignore(end())
        .parse(text)
        .into_result()
        .map_err(|errors| grammar_error(text, errors, ""))?;
    Lower { text, dict }.condition(&syntax)
}

struct Lower<'a> {
    text: &'a str,
    dict: &'a Dictionary,
}

impl Lower<'_> {
    fn error(&self, node: &Node, message: impl AsRef<str>) -> Error {
        at_column(self.text, node.span.clone(), message)
    }

    fn condition(&self, node: &Node) -> Result<Cohort> {
        match &node.node {
            Expr::Or(items) => Ok(Cohort::Or(self.conditions(items)?)),
            Expr::And(items) => Ok(Cohort::And(self.conditions(items)?)),
            Expr::Not(inner) => Ok(match self.condition(inner)? {
                // !is.na(x) is the tree's not_null, as in the JSON form.
                Cohort::IsNull { variable } if is_call(inner, "is.na") => {
                    Cohort::NotNull { variable }
                }
                other => Cohort::Not(Box::new(other)),
            }),
            Expr::Compare { left, op, right } => self.comparison(node, left, op, right),
            Expr::In { left, right } => self.membership(node, left, right),
            Expr::Call { name, args } if name.node == "is.na" => {
                let [arg] = args.as_slice() else {
                    return Err(self.error(node, "is.na() takes one variable, e.g. is.na(bmi)"));
                };
                let Expr::Name(n) = &arg.node else {
                    return Err(self.error(arg, "is.na() takes a variable name, e.g. is.na(bmi)"));
                };
                let variable = self.variable(arg, n)?;
                Ok(Cohort::IsNull { variable })
            }
            Expr::Call { name, .. } if name.node == "c" => Err(self.error(
                node,
                "c(...) lists values after %in%, e.g. smoking %in% c(\"former\", \"current\")",
            )),
            Expr::Call { name, .. } => Err(self.error(node, function_refusal(&name.node))),
            Expr::Name(n) if literal_name(n).is_some() => Err(self.error(
                node,
                format!("{n} on its own is not a condition; compare a variable with it"),
            )),
            Expr::Name(n) => {
                // A boolean variable stands for itself being TRUE, as in R.
                let variable = self.variable(node, n)?;
                let kind = self.dict.get(&variable)?.kind;
                if kind != VarType::Boolean {
                    return Err(self.error(
                        node,
                        format!(
                            "\"{variable}\" is {kind} and is not a condition on its own; compare it, e.g. {variable} {}",
                            example(kind)
                        ),
                    ));
                }
                Ok(Cohort::Compare {
                    variable,
                    op: CompareOp::Eq,
                    value: Value::Boolean(true),
                })
            }
            Expr::Number(_) | Expr::Text(_) => Err(self.error(
                node,
                "a value on its own is not a condition; compare a variable with it",
            )),
        }
    }

    fn conditions(&self, items: &[Node]) -> Result<Vec<Cohort>> {
        items.iter().map(|i| self.condition(i)).collect()
    }

    fn comparison(
        &self,
        node: &Node,
        left: &Node,
        op: &Spanned<CompareOp>,
        right: &Node,
    ) -> Result<Cohort> {
        let (var, op, lit) = match (self.name_of(left), self.name_of(right)) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    right,
                    "compare a variable with a value, not with another variable",
                ))
            }
            (Some(_), None) => (left, op.node, right),
            // `65 <= age` reads as `age >= 65`.
            (None, Some(_)) => (right, mirrored(op.node), left),
            (None, None) => {
                let side = if matches!(left.node, Expr::Number(_) | Expr::Text(_))
                    || self.is_literal_name(left)
                {
                    right
                } else {
                    left
                };
                return Err(self.operand_error(side));
            }
        };
        let Expr::Name(n) = &var.node else {
            unreachable!("name_of said a name")
        };
        let variable = self.variable(var, n)?;
        let value = self.value(lit)?;
        self.leaf(
            node,
            Cohort::Compare {
                variable,
                op,
                value,
            },
        )
    }

    fn membership(&self, node: &Node, left: &Node, right: &Node) -> Result<Cohort> {
        let Expr::Name(n) = &left.node else {
            return Err(self.operand_error(left));
        };
        if self.is_literal_name(left) {
            return Err(self.operand_error(left));
        }
        let variable = self.variable(left, n)?;
        let values = match &right.node {
            Expr::Call { name, args } if name.node == "c" => {
                if args.is_empty() {
                    return Err(self.error(right, "c() lists no values; give at least one"));
                }
                args.iter()
                    .map(|a| self.value(a))
                    .collect::<Result<Vec<_>>>()?
            }
            _ => vec![self.value(right)?],
        };
        self.leaf(node, Cohort::In { variable, values })
    }

    /// Checks a condition's types and categories now, so the error can
    /// name its column.
    fn leaf(&self, node: &Node, leaf: Cohort) -> Result<Cohort> {
        leaf.validate(self.dict, 1, &mut 0)
            .map_err(|e| self.error(node, e.message))?;
        Ok(leaf)
    }

    fn name_of<'n>(&self, node: &'n Node) -> Option<&'n str> {
        match &node.node {
            Expr::Name(n) if literal_name(n).is_none() => Some(n),
            _ => None,
        }
    }

    fn is_literal_name(&self, node: &Node) -> bool {
        matches!(&node.node, Expr::Name(n) if literal_name(n).is_some())
    }

    fn operand_error(&self, node: &Node) -> Error {
        match &node.node {
            Expr::Call { name, .. } if name.node != "c" => {
                self.error(node, function_refusal(&name.node))
            }
            Expr::Number(_) | Expr::Text(_) | Expr::Name(_) => self.error(
                node,
                "a comparison needs a variable on one side, e.g. age >= 65",
            ),
            _ => self.error(
                node,
                "expected a variable here; combine conditions with & and |, e.g. age >= 65 & sex == \"F\"",
            ),
        }
    }

    fn variable(&self, node: &Node, name: &str) -> Result<String> {
        resolve(self.text, self.dict, node.span.clone(), name)
    }

    fn value(&self, node: &Node) -> Result<Value> {
        match &node.node {
            Expr::Number(digits) => number_value(digits).ok_or_else(|| {
                self.error(node, format!("{digits} is not a number Plexus can hold"))
            }),
            Expr::Text(s) => Ok(Value::Text(s.clone())),
            Expr::Name(n) => match literal_name(n) {
                Some(Ok(b)) => Ok(Value::Boolean(b)),
                Some(Err(hint)) => Err(self.error(node, hint)),
                None => Err(self.error(
                    node,
                    format!(
                        "expected a value (a number, a \"string\", TRUE or FALSE), found the name {}",
                        super::lex::name_text(n)
                    ),
                )),
            },
            _ => Err(self.error(
                node,
                "expected a value (a number, a \"string\", TRUE or FALSE)",
            )),
        }
    }
}

/// A known variable's name, or an error naming the column and the nearest
/// name in the dictionary.
pub(super) fn resolve(
    text: &str,
    dict: &Dictionary,
    span: std::ops::Range<usize>,
    name: &str,
) -> Result<String> {
    if dict.variables.contains_key(name) {
        return Ok(name.to_string());
    }
    let hint = match dict.closest(name) {
        Some(c) => format!("; did you mean \"{c}\"?"),
        None => "; `plexus dictionary` lists the variables".into(),
    };
    Err(at_column(
        text,
        span,
        format!("no variable \"{name}\" in the dictionary{hint}"),
    ))
}

fn is_call(node: &Node, function: &str) -> bool {
    matches!(&node.node, Expr::Call { name, .. } if name.node == function)
}

/// Names that are R's literals, or look like them: `Ok` with the boolean,
/// `Err` with a hint on how to write it.
fn literal_name(n: &str) -> Option<std::result::Result<bool, &'static str>> {
    match n {
        "TRUE" => Some(Ok(true)),
        "FALSE" => Some(Ok(false)),
        "T" | "F" | "true" | "false" | "True" | "False" => {
            Some(Err("write booleans as TRUE or FALSE"))
        }
        "NA" | "NULL" => Some(Err(
            "missing values are tested with is.na(x) or !is.na(x), not compared",
        )),
        _ => None,
    }
}

/// A literal number as its JSON form types it: integers without a point or
/// exponent, floats otherwise.
pub(super) fn number_value(digits: &str) -> Option<Value> {
    if !digits.contains(['.', 'e', 'E']) {
        if let Ok(i) = digits.parse::<i64>() {
            return Some(Value::Integer(i));
        }
    }
    digits
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(Value::Float)
}

fn mirrored(op: CompareOp) -> CompareOp {
    match op {
        CompareOp::Lt => CompareOp::Gt,
        CompareOp::Le => CompareOp::Ge,
        CompareOp::Gt => CompareOp::Lt,
        CompareOp::Ge => CompareOp::Le,
        other => other,
    }
}

fn example(kind: VarType) -> &'static str {
    match kind {
        VarType::Integer | VarType::Float => ">= 65",
        VarType::Categorical => "== \"level\"",
        VarType::Date => ">= \"2020-01-01\"",
        VarType::Boolean => "== TRUE",
    }
}

fn function_refusal(function: &str) -> String {
    if function.chars().any(|c| !c.is_ascii_graphic()) {
        return "functions are not supported in a cohort; use is.na(x) or %in% c(...)".into();
    }
    format!(
        "{function}() is not supported in a cohort: conditions compare variables with values, test is.na(x) or use %in% c(...)"
    )
}
