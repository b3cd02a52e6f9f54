//! Model formulas in R's notation: `death ~ age + smoking` for a GLM,
//! `Surv(followup_days, death) ~ age + smoking` for a Cox model or
//! Kaplan-Meier curves. Only main effects of dictionary variables are
//! expressible, because that is what the query model fits; everything
//! else R allows in a formula is refused with a reason.

use chumsky::prelude::*;

use super::cohort::resolve;
use super::lex::{number, spanned_name, string, Extra};
use super::{at_column, grammar_error, precheck, Spanned};
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::query::AnalysisKind;

/// What a formula says, with names resolved against the dictionary.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    pub outcome: Outcome,
    /// The terms right of `~`, in their written order. For Kaplan-Meier
    /// curves, the group variable when there is one.
    pub covariates: Vec<String>,
    /// False when the formula says `- 1` or `+ 0`.
    pub intercept: bool,
}

/// The left of `~`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Variable(String),
    Survival { time: String, event: String },
}

/// A term as written.
#[derive(Debug, Clone, PartialEq)]
enum Term {
    Name(String),
    Number(String),
    /// `f(...)`, with the text between the parentheses.
    Call {
        name: Spanned<String>,
        args: Spanned<String>,
    },
    /// Terms joined by an operator other than `+` or `-` (`a:b`, `a*b`,
    /// `a^2`, `a/b`, `a %in% b`), with the first such operator.
    Operator(Spanned<String>),
    /// A parenthesised sum.
    Group(Vec<Signed>),
}

/// A term and whether it was subtracted.
type Signed = (bool, Spanned<Term>);

struct Written {
    left: Option<Vec<Signed>>,
    right: Vec<Signed>,
}

fn grammar<'a>() -> impl Parser<'a, &'a str, Written, Extra<'a>> {
    // Whatever stands between a call's parentheses, kept as text; only
    // Surv() looks inside.
    let balanced = recursive(|balanced| {
        choice((
            none_of("()\"'").ignored(),
            string().ignored(),
            balanced.delimited_by(just('('), just(')')).ignored(),
        ))
        .repeated()
    });
    let args = balanced
        .to_slice()
        .map_with(|s: &str, e| Spanned {
            node: s.to_string(),
            span: e.span().into_range(),
        })
        .delimited_by(just('('), just(')'));

    let sum = recursive(|sum| {
        let named = spanned_name()
            .then(text::inline_whitespace().ignore_then(args).or_not())
            .map(|(name, args)| match args {
                Some(args) => Term::Call { name, args },
                None => Term::Name(name.node),
            });
        let atom = choice((
            sum.padded()
                .delimited_by(just('('), just(')'))
                .map(Term::Group),
            number().map(Term::Number),
            named,
        ))
        .map_with(|node, e| Spanned {
            node,
            span: e.span().into_range(),
        })
        .labelled("a term")
        .padded()
        .boxed();
        let operator = choice((
            just(":"),
            just("*"),
            just("^"),
            just("/"),
            just("%in%"),
            just("|"),
        ))
        .map_with(|op: &str, e| {
            let span: SimpleSpan = e.span();
            Spanned {
                node: op.to_string(),
                span: span.into_range(),
            }
        })
        .padded();
        let term = atom
            .clone()
            .then(operator.then(atom).repeated().collect::<Vec<_>>())
            .map_with(
                |(first, rest): (Spanned<Term>, Vec<_>), e| match rest.into_iter().next() {
                    None => first,
                    Some((op, _)) => Spanned {
                        node: Term::Operator(op),
                        span: e.span().into_range(),
                    },
                },
            );
        let sign = choice((just('+').to(false), just('-').to(true))).padded();
        sign.or_not()
            .then(term.clone())
            .map(|(minus, t)| (minus.unwrap_or(false), t))
            .then(sign.then(term).repeated().collect::<Vec<_>>())
            .map(|(first, mut rest)| {
                rest.insert(0, first);
                rest
            })
            .boxed()
    });

    sum.clone()
        .or_not()
        .then_ignore(just('~').padded().labelled("~"))
        .then(sum)
        .map(|(left, right)| Written { left, right })
}

/// Parses the formula of a `glm`, `cox` or `kaplan_meier` analysis,
/// resolving every name against the dictionary. Errors name the column of
/// the text they are about.
pub fn parse_formula(text: &str, kind: AnalysisKind, dict: &Dictionary) -> Result<Formula> {
    precheck("formula", text)?;
    if !matches!(
        kind,
        AnalysisKind::Glm | AnalysisKind::Cox | AnalysisKind::KaplanMeier
    ) {
        return Err(Error::invalid(format!(
            "a {kind} analysis takes no formula; formulas are for glm, cox and kaplan_meier"
        )));
    }
    if !text.contains('~') {
        return Err(at_column(
            text,
            0..0,
            match kind {
                AnalysisKind::Glm => "a formula needs ~ between the outcome and the covariates, e.g. death ~ age + smoking",
                _ => "a formula needs ~ between Surv(time, event) and the covariates, e.g. Surv(followup_days, death) ~ age",
            },
        ));
    }
    let written = grammar()
        .then_ignore(end())
        .parse(text)
        .into_result()
        .map_err(|errors| grammar_error(text, errors, ":*^/%|"))?;
    Lower { text, dict, kind }.formula(&written)
}

struct Lower<'a> {
    text: &'a str,
    dict: &'a Dictionary,
    kind: AnalysisKind,
}

impl Lower<'_> {
    fn error<T>(&self, node: &Spanned<T>, message: impl AsRef<str>) -> Error {
        at_column(self.text, node.span.clone(), message)
    }

    fn formula(&self, written: &Written) -> Result<Formula> {
        let outcome = self.outcome(written.left.as_deref())?;
        let taken: Vec<&str> = match &outcome {
            Outcome::Variable(v) => vec![v],
            Outcome::Survival { time, event } => vec![time, event],
        };
        let mut terms = Vec::new();
        flatten(&written.right, false, &mut terms);
        let mut covariates: Vec<String> = Vec::new();
        let mut first_term: Option<&Spanned<Term>> = None;
        let mut intercept = true;
        for (minus, term) in terms {
            match &term.node {
                Term::Number(n) => {
                    let keeps = match (n.as_str(), minus) {
                        ("1", false) | ("0", true) => true,
                        ("1", true) | ("0", false) => false,
                        _ => {
                            return Err(self.error(
                                term,
                                format!("{n} is not a term; only 1 (keep the intercept) or 0 and - 1 (drop it) may stand alone"),
                            ))
                        }
                    };
                    if !keeps && self.kind != AnalysisKind::Glm {
                        return Err(self.error(
                            term,
                            format!(
                                "a {} has no intercept to drop; leave out - 1 and + 0",
                                self.kind
                            ),
                        ));
                    }
                    intercept = keeps;
                }
                Term::Name(n) if n == "." => {
                    return Err(self.error(
                        term,
                        "`.` (every other variable) is not supported; name the covariates",
                    ))
                }
                Term::Name(n) => {
                    let variable = resolve(self.text, self.dict, term.span.clone(), n)?;
                    if minus {
                        return Err(self.error(
                            term,
                            format!("- removes only the intercept (- 1); leave \"{variable}\" out instead"),
                        ));
                    }
                    if covariates.contains(&variable) {
                        return Err(self.error(
                            term,
                            format!(
                                "\"{variable}\" appears twice in the formula; list each term once"
                            ),
                        ));
                    }
                    if taken.contains(&variable.as_str()) {
                        return Err(self.error(
                            term,
                            format!("\"{variable}\" is left of ~ and cannot also be a covariate"),
                        ));
                    }
                    if self.kind == AnalysisKind::KaplanMeier {
                        if let Some(first) = first_term {
                            return Err(self.error(
                                term,
                                format!(
                                    "kaplan_meier curves take at most one group variable, and the formula has a second term (the first is at {})",
                                    super::position(self.text, first.span.start)
                                ),
                            ));
                        }
                    }
                    first_term = Some(term);
                    covariates.push(variable);
                }
                Term::Call { name, .. } => {
                    return Err(self.error(term, call_refusal(&name.node, true)))
                }
                Term::Operator(op) => return Err(self.error(op, operator_refusal(&op.node))),
                Term::Group(_) => unreachable!("groups are flattened"),
            }
        }
        if self.kind == AnalysisKind::Cox && covariates.is_empty() {
            return Err(at_column(
                self.text,
                self.text.find('~').map_or(0, |i| i + 1)..self.text.len(),
                "a cox model needs at least one covariate right of ~ (use kaplan_meier for curves without covariates)",
            ));
        }
        Ok(Formula {
            outcome,
            covariates,
            intercept,
        })
    }

    fn outcome(&self, left: Option<&[Signed]>) -> Result<Outcome> {
        let survival = self.kind != AnalysisKind::Glm;
        let example = if survival {
            "Surv(followup_days, death) ~ age"
        } else {
            "death ~ age + smoking"
        };
        let Some(left) = left else {
            return Err(at_column(
                self.text,
                0..0,
                if survival {
                    format!(
                        "a {} needs Surv(time, event) left of ~, e.g. {example}",
                        self.kind
                    )
                } else {
                    format!("a glm needs an outcome left of ~, e.g. {example}")
                },
            ));
        };
        let (minus, term) = &left[0];
        if left.len() > 1 || *minus {
            return Err(self.error(
                term,
                format!("the left of ~ holds one outcome, e.g. {example}"),
            ));
        }
        match (&term.node, survival) {
            (Term::Name(n), false) => Ok(Outcome::Variable(resolve(
                self.text,
                self.dict,
                term.span.clone(),
                n,
            )?)),
            (Term::Call { name, args }, true) if name.node == "Surv" => self.surv(term, args),
            (Term::Call { name, .. }, false) if name.node == "Surv" => Err(self.error(
                term,
                "Surv(...) is a survival outcome; fit it with cox or kaplan_meier, not glm",
            )),
            (Term::Name(_), true) => Err(self.error(
                term,
                format!(
                    "a {} needs Surv(time, event) left of ~, e.g. {example}",
                    self.kind
                ),
            )),
            (Term::Call { name, .. }, _) => Err(self.error(term, call_refusal(&name.node, false))),
            (Term::Operator(op), _) => Err(self.error(op, operator_refusal(&op.node))),
            _ => Err(self.error(
                term,
                format!("the left of ~ holds one outcome, e.g. {example}"),
            )),
        }
    }

    /// `Surv(time, event)`: the text between the parentheses, parsed on
    /// its own and located in the whole formula.
    fn surv(&self, term: &Spanned<Term>, args: &Spanned<String>) -> Result<Outcome> {
        let names = spanned_name()
            .padded()
            .separated_by(just(','))
            .collect::<Vec<_>>()
            .then_ignore(end())
            .parse(args.node.as_str())
            .into_result()
            .ok()
            .filter(|names| names.len() == 2);
        let Some(names) = names else {
            return Err(self.error(
                term,
                "Surv() takes a time and an event variable, e.g. Surv(followup_days, death)",
            ));
        };
        let shift =
            |n: &Spanned<String>| args.span.start + n.span.start..args.span.start + n.span.end;
        let time = resolve(self.text, self.dict, shift(&names[0]), &names[0].node)?;
        let event = resolve(self.text, self.dict, shift(&names[1]), &names[1].node)?;
        Ok(Outcome::Survival { time, event })
    }
}

/// A sum with its parentheses removed; a subtracted group subtracts each
/// of its terms.
fn flatten<'t>(terms: &'t [Signed], negate: bool, out: &mut Vec<(bool, &'t Spanned<Term>)>) {
    for (minus, term) in terms {
        match &term.node {
            Term::Group(inner) => flatten(inner, negate != *minus, out),
            _ => out.push((negate != *minus, term)),
        }
    }
}

fn call_refusal(function: &str, right: bool) -> String {
    match function {
        "strata" => "strata() is not needed: a cox model is always stratified by site, and no other strata are supported".into(),
        "Surv" if right => "Surv() belongs left of ~".into(),
        "I" => "I() (arithmetic on variables) is not supported; use the dictionary's variables as they are".into(),
        f => format!(
            "{f}() is not supported: formulas name dictionary variables only, e.g. death ~ age + smoking"
        ),
    }
}

fn operator_refusal(op: &str) -> String {
    match op {
        ":" | "*" => {
            format!("interactions ({op}) are not supported; list main effects joined by +")
        }
        op => format!("the operator {op} is not supported in formulas; join terms with +"),
    }
}
