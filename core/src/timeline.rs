//! A study's time logic: variables the study itself derives from the
//! dictionary's dates and dated events (an index date, windows around it,
//! follow-up to an event, days between two dates). They are declared in
//! `study.toml` under `[derived.NAME]`, so they are public and pinned by
//! the definition hash like the rest of the study, and never free SQL: a
//! node builds each one from its own mapping of the named dictionary
//! variables.
//!
//! ```toml
//! [derived.index]
//! type = "date"
//! first_date = { event = "nsaid" }
//!
//! [derived.bleed_within_180]
//! type = "boolean"
//! window = { event = "gi_bleed", origin = "nsaid_index", from = 1, to = 180 }
//!
//! [derived.prior_observation]
//! type = "integer"
//! min = 0
//! max = 36500
//! days_between = { from = "observation_start", to = "nsaid_index" }
//! ```
//!
//! `first_date` gives a date (the study's index event); the other three
//! read dates and dated events of the dictionary, or a `first_date` of
//! the study. `time_to_event`, `window` and `days_between` serve a
//! warehouse node's own mapping (`[data.postgres.variables]`) too, where
//! they were first written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dictionary::{check_identifier, Bound, Dictionary, VarType, Variable};
use crate::error::{Error, Result};

/// `time_to_event = { origin = "...", event = "...", censor = "..." }`:
/// `origin` and `censor` are dates (such as the first exposure of a concept
/// set, and the end of observation); `event` is the presence of a dated
/// event. The event counts when one of its rows falls after the origin and
/// on or before the censoring date; follow-up ends at the first such row,
/// or else at the censoring date. A patient without an origin or a
/// censoring date, or censored before the origin, is missing. As an integer
/// or float the variable is the days of follow-up; as a boolean, whether
/// the event came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeToEvent {
    pub origin: String,
    pub event: String,
    pub censor: String,
}

/// `window = { event = "...", origin = "...", from = -180, to = -1 }`: true
/// when the patient has a row of `event` (a dated event) dated from
/// `origin + from` to `origin + to` days, both ends included; missing
/// without an origin date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub event: String,
    pub origin: String,
    pub from: i32,
    pub to: i32,
}

/// `days_between = { from = "...", to = "..." }`: `to` minus `from`, two
/// dates, in days; missing when either is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaysBetween {
    pub from: String,
    pub to: String,
}

/// `first_date = { event = "..." }`: the date of the patient's first row
/// of `event` (a dated event); missing without one. The study's index
/// event, for windows and follow-up around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstDate {
    pub event: String,
}

/// The OMOP CDM domain a study's concept set is recorded in: the table a
/// node reads its rows from (`condition_occurrence`, `drug_exposure`,
/// `measurement` or `observation`, with the row's start date).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Condition,
    Drug,
    Measurement,
    Observation,
}

impl Domain {
    pub const ALL: [Domain; 4] = [
        Domain::Condition,
        Domain::Drug,
        Domain::Measurement,
        Domain::Observation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Condition => "condition",
            Domain::Drug => "drug",
            Domain::Measurement => "measurement",
            Domain::Observation => "observation",
        }
    }
}

/// Most concept ids a study's concept set may list (included and excluded).
pub const MAX_SET_CONCEPTS: usize = 5_000;

/// A concept set the study brings (`[concept_sets.NAME]` in study.toml):
/// OMOP concept ids in one domain, with their descendants in the
/// vocabulary when `descendants`, less `exclude` (and theirs). To the
/// study it is a boolean (a row of the set, anywhere in the record) and a
/// dated event that `first_date`, `window` and `time_to_event` read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConceptSet {
    pub domain: Domain,
    pub concepts: Vec<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub descendants: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl StudyConceptSet {
    /// Checks `name`'s set; `dict` is the network dictionary.
    pub fn check(&self, name: &str, dict: &Dictionary) -> Result<()> {
        crate::text::check("the name of a concept set", name)?;
        let at = format!("concept_sets.{name}");
        crate::text::check(&format!("{at}.description"), &self.description)?;
        check_identifier("concept set name", name)?;
        if dict.variables.contains_key(name) {
            return Err(Error::invalid(format!(
                "{at}: \"{name}\" is already a variable of the data dictionary; give the concept set another name"
            )));
        }
        if self.concepts.is_empty() {
            return Err(Error::invalid(format!("{at} lists no concepts")));
        }
        if self.concepts.len() + self.exclude.len() > MAX_SET_CONCEPTS {
            return Err(Error::invalid(format!(
                "{at} lists {} concept ids; at most {MAX_SET_CONCEPTS} (use descendants = true to take a concept's whole branch)",
                self.concepts.len() + self.exclude.len()
            )));
        }
        if let Some(bad) = self.concepts.iter().chain(&self.exclude).find(|c| **c <= 0) {
            return Err(Error::invalid(format!(
                "{at} lists concept id {bad}; OMOP concept ids are positive"
            )));
        }
        Ok(())
    }

    /// The boolean it adds to the study's dictionary.
    pub fn variable(&self) -> Variable {
        let mut how = format!(
            "a row of the study's {} concept set of {} concept{}",
            self.domain.as_str(),
            self.concepts.len(),
            if self.concepts.len() == 1 { "" } else { "s" }
        );
        if self.descendants {
            how.push_str(" with their descendants");
        }
        if !self.exclude.is_empty() {
            how.push_str(&format!(", less {} excluded", self.exclude.len()));
        }
        Variable {
            kind: VarType::Boolean,
            unit: None,
            min: None,
            max: None,
            categories: Vec::new(),
            description: if self.description.is_empty() {
                how
            } else {
                format!("{} ({how})", self.description)
            },
        }
    }
}

/// Longest window, either side of the origin: a century.
pub const MAX_WINDOW_DAYS: i32 = 36_525;

/// One of the four derivations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation<'a> {
    FirstDate(&'a FirstDate),
    TimeToEvent(&'a TimeToEvent),
    Window(&'a Window),
    DaysBetween(&'a DaysBetween),
}

impl<'a> Derivation<'a> {
    /// The key it is written under.
    pub fn key(self) -> &'static str {
        match self {
            Derivation::FirstDate(_) => "first_date",
            Derivation::TimeToEvent(_) => "time_to_event",
            Derivation::Window(_) => "window",
            Derivation::DaysBetween(_) => "days_between",
        }
    }

    /// The variables it reads, each with its field and whether it must be
    /// a dated event (else a date).
    pub fn inputs(self) -> Vec<(&'static str, &'a str, bool)> {
        match self {
            Derivation::FirstDate(f) => vec![("event", f.event.as_str(), true)],
            Derivation::TimeToEvent(t) => vec![
                ("origin", t.origin.as_str(), false),
                ("event", t.event.as_str(), true),
                ("censor", t.censor.as_str(), false),
            ],
            Derivation::Window(w) => vec![
                ("event", w.event.as_str(), true),
                ("origin", w.origin.as_str(), false),
            ],
            Derivation::DaysBetween(d) => {
                vec![
                    ("from", d.from.as_str(), false),
                    ("to", d.to.as_str(), false),
                ]
            }
        }
    }

    /// Whether a variable of type `kind` can hold what it gives.
    pub fn gives(self, kind: VarType) -> std::result::Result<(), &'static str> {
        let ok = match self {
            Derivation::FirstDate(_) => kind == VarType::Date,
            Derivation::TimeToEvent(_) => kind.is_numeric() || kind == VarType::Boolean,
            Derivation::Window(_) => kind == VarType::Boolean,
            Derivation::DaysBetween(_) => kind.is_numeric(),
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            Derivation::FirstDate(_) => "a date",
            Derivation::TimeToEvent(_) => {
                "days (integer or float) or whether the event came (boolean)"
            }
            Derivation::Window(_) => "a boolean",
            Derivation::DaysBetween(_) => "days (integer or float)",
        })
    }
}

/// A variable a study derives (`[derived.NAME]` in `study.toml`): its type
/// and public bounds as a dictionary variable, and exactly one derivation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Derived {
    #[serde(rename = "type")]
    pub kind: VarType,
    /// Public bounds of days, which a private summary or correlation needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_date: Option<FirstDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_event: Option<TimeToEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_between: Option<DaysBetween>,
}

impl Derived {
    /// Its one derivation; `at` names it in the error.
    pub fn derivation(&self, at: &str) -> Result<Derivation<'_>> {
        let given = [
            self.first_date.as_ref().map(Derivation::FirstDate),
            self.time_to_event.as_ref().map(Derivation::TimeToEvent),
            self.window.as_ref().map(Derivation::Window),
            self.days_between.as_ref().map(Derivation::DaysBetween),
        ];
        let mut given = given.into_iter().flatten();
        match (given.next(), given.next()) {
            (Some(how), None) => Ok(how),
            (None, _) => Err(Error::invalid(format!(
                "{at} names no derivation: give one of first_date, time_to_event, window or days_between"
            ))),
            (Some(_), Some(_)) => Err(Error::invalid(format!(
                "{at}: first_date, time_to_event, window and days_between each derive the variable; keep one of them"
            ))),
        }
    }

    /// The entry it adds to the dictionary. The description says how it
    /// is derived, so `plexus dictionary` and the study show it.
    pub fn variable(&self) -> Variable {
        let how = match self.derivation("") {
            Ok(Derivation::FirstDate(f)) => format!("first_date(event {})", f.event),
            Ok(Derivation::TimeToEvent(t)) => format!(
                "time_to_event(origin {}, event {}, censor {})",
                t.origin, t.event, t.censor
            ),
            Ok(Derivation::Window(w)) => format!(
                "window(event {} from {} to {} days of {})",
                w.event, w.from, w.to, w.origin
            ),
            Ok(Derivation::DaysBetween(d)) => {
                format!("days_between(from {} to {})", d.from, d.to)
            }
            Err(_) => String::new(),
        };
        let description = if self.description.is_empty() {
            format!("derived by the study: {how}")
        } else {
            format!("{} (derived by the study: {how})", self.description)
        };
        Variable {
            kind: self.kind,
            unit: self.kind.is_numeric().then(|| "days".to_string()),
            min: self.min.map(Bound::Number),
            max: self.max.map(Bound::Number),
            categories: Vec::new(),
            description,
        }
    }

    /// Checks `name`'s declaration against the network dictionary `dict`
    /// and the study's other derived variables `study`.
    pub fn check(
        &self,
        name: &str,
        dict: &Dictionary,
        study: &BTreeMap<String, Derived>,
    ) -> Result<()> {
        // Before any message echoes the name.
        crate::text::check("the name of a derived variable", name)?;
        let at = format!("derived.{name}");
        crate::text::check(&format!("{at}.description"), &self.description)?;
        check_identifier("derived variable name", name)?;
        if dict.variables.contains_key(name) {
            return Err(Error::invalid(format!(
                "{at}: \"{name}\" is already a variable of the data dictionary or a concept set of the study; give the derived variable another name"
            )));
        }
        let how = self.derivation(&at)?;
        let key = how.key();
        if let Err(want) = how.gives(self.kind) {
            return Err(Error::invalid(format!(
                "{at} is {}, but {key} gives {want}; change its type",
                self.kind
            )));
        }
        for (field, var, event) in how.inputs() {
            crate::text::check(&format!("{at}.{key}.{field}"), var)?;
            // A date may be the study's own index (a first_date).
            if let Some(d) = study.get(var).filter(|_| !dict.variables.contains_key(var)) {
                if event || d.first_date.is_none() || how.key() == "first_date" {
                    return Err(Error::invalid(format!(
                        "{at}.{key}.{field} names \"{var}\", a variable the study derives; only a date given by first_date may be read, as a date (origin, censor, from or to)"
                    )));
                }
                continue;
            }
            let v = dict.get(var).map_err(|e| {
                Error::invalid(format!(
                    "{at}.{key}.{field}: {} (a derived variable reads the dictionary's variables and the study's first_date dates)",
                    e.message
                ))
            })?;
            let want = if event {
                VarType::Boolean
            } else {
                VarType::Date
            };
            if v.kind != want {
                let what = if event {
                    "a dated event: a boolean of the dictionary that nodes map to an event table with its date"
                } else {
                    "a date"
                };
                return Err(Error::invalid(format!(
                    "{at}.{key}.{field} names \"{var}\", which is {}; it must be {what}",
                    v.kind
                )));
            }
        }
        if let Derivation::Window(w) = how {
            let days = -MAX_WINDOW_DAYS..=MAX_WINDOW_DAYS;
            if w.from > w.to || !days.contains(&w.from) || !days.contains(&w.to) {
                return Err(Error::invalid(format!(
                    "{at}.window runs from {} to {} days; from must not be after to, and both within {MAX_WINDOW_DAYS} days of the origin",
                    w.from, w.to
                )));
            }
        }
        match (self.min, self.max) {
            (None, None) => {}
            _ if !self.kind.is_numeric() => {
                return Err(Error::invalid(format!(
                    "{at} is {} and cannot have min or max",
                    self.kind
                )))
            }
            (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && lo < hi => {}
            _ => {
                return Err(Error::invalid(format!(
                "{at} needs both min and max, finite, with min < max (public bounds of its days)"
            )))
            }
        }
        Ok(())
    }
}

/// `dict` with the study's concept sets (as booleans) and derived
/// variables added, after checking them: a derivation's event may be a
/// dictionary boolean or one of the study's concept sets.
pub fn extend(
    dict: &Dictionary,
    derived: &BTreeMap<String, Derived>,
    sets: &BTreeMap<String, StudyConceptSet>,
) -> Result<Dictionary> {
    let mut with_sets = dict.clone();
    for (name, s) in sets {
        s.check(name, dict)?;
        with_sets.variables.insert(name.clone(), s.variable());
    }
    let mut out = with_sets.clone();
    for (name, d) in derived {
        d.check(name, &with_sets, derived)?;
        out.variables.insert(name.clone(), d.variable());
    }
    Ok(out)
}

/// The dictionary variables `names` rest on: each derived name replaced by
/// the variables its derivation reads.
pub fn inputs(derived: &BTreeMap<String, Derived>, names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo: Vec<String> = names.to_vec();
    // Checked definitions chain one level (a first_date read by another),
    // and the bound guards an unchecked one.
    let mut steps = 0;
    while let Some(n) = todo.pop() {
        steps += 1;
        match derived.get(&n).and_then(|d| d.derivation("").ok()) {
            Some(how) if steps <= 64 * (names.len() + 1) => {
                todo.extend(how.inputs().into_iter().map(|(_, v, _)| v.to_string()))
            }
            _ => out.push(n),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A block of the study (its derived variables or its concept sets) as
/// JSON, an object keyed by name, for the wire; empty when there is none.
pub fn to_json<T: Serialize>(block: &BTreeMap<String, T>) -> String {
    if block.is_empty() {
        return String::new();
    }
    serde_json::to_string(block).expect("a study block serialises")
}

/// [`to_json`]'s inverse; the empty text is an empty block. `what` names
/// the block in the error.
pub fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<BTreeMap<String, T>> {
    if text.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("the study's {what} are not valid: {e}")))
}

/// A fingerprint of the derived block, for the keys of cached answers: the
/// same query over a redefined variable is another question. Empty when
/// the study derives nothing.
pub fn fingerprint(
    derived: &BTreeMap<String, Derived>,
    sets: &BTreeMap<String, StudyConceptSet>,
) -> String {
    if derived.is_empty() && sets.is_empty() {
        return String::new();
    }
    let bytes = serde_json::to_vec(&(derived, sets)).expect("derived variables serialise");
    crate::hash::sha256_hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict() -> Dictionary {
        Dictionary::from_toml(
            "name='t'\nversion='1'\n\
             [variables.index]\ntype='date'\n\
             [variables.start]\ntype='date'\n\
             [variables.bleed]\ntype='boolean'\n\
             [variables.age]\ntype='integer'\n",
        )
        .unwrap()
    }

    fn derived(text: &str) -> BTreeMap<String, Derived> {
        #[derive(Deserialize)]
        struct D {
            derived: BTreeMap<String, Derived>,
        }
        toml::from_str::<D>(text).unwrap().derived
    }

    #[test]
    fn adds_checked_variables_to_the_dictionary() {
        let d = derived(
            "[derived.w]\ntype='boolean'\nwindow={event='bleed', origin='index', from=1, to=365}\n\
             [derived.prior]\ntype='integer'\nmin=0\nmax=36500\ndays_between={from='start', to='index'}\n",
        );
        let x = extend(&dict(), &d, &BTreeMap::new()).unwrap();
        assert_eq!(x.get("w").unwrap().kind, VarType::Boolean);
        assert_eq!(
            x.get("prior").unwrap().numeric_bounds(),
            Some((0.0, 36500.0))
        );
        assert!(x
            .get("w")
            .unwrap()
            .description
            .contains("window(event bleed from 1 to 365 days of index)"));
        assert_eq!(
            inputs(&d, &["w".into(), "age".into()]),
            ["age", "bleed", "index"]
        );
        assert_eq!(fingerprint(&d, &BTreeMap::new()).len(), 64);

        // The study's own index, read as a date by a window and a follow-up.
        let d = derived(
            "[derived.first_bleed]\ntype='date'\nfirst_date={event='bleed'}\n\
             [derived.w]\ntype='boolean'\nwindow={event='bleed', origin='first_bleed', from=-30, to=-1}\n\
             [derived.since]\ntype='integer'\ndays_between={from='start', to='first_bleed'}\n",
        );
        let x = extend(&dict(), &d, &BTreeMap::new()).unwrap();
        assert_eq!(x.get("first_bleed").unwrap().kind, VarType::Date);
        assert_eq!(inputs(&d, &["since".into()]), ["bleed", "start"]);
        assert_eq!(fingerprint(&BTreeMap::new(), &BTreeMap::new()), "");
    }

    fn sets(text: &str) -> BTreeMap<String, StudyConceptSet> {
        #[derive(Deserialize)]
        struct S {
            concept_sets: BTreeMap<String, StudyConceptSet>,
        }
        toml::from_str::<S>(text).unwrap().concept_sets
    }

    #[test]
    fn a_study_concept_set_is_a_boolean_and_a_dated_event() {
        let s = sets(
            "[concept_sets.nsaids]\ndomain='drug'\nconcepts=[1177480, 1118084]\ndescendants=true\nexclude=[1118084]\n",
        );
        let d = derived(
            "[derived.first_nsaid]\ntype='date'\nfirst_date={event='nsaids'}\n\
             [derived.after]\ntype='boolean'\nwindow={event='bleed', origin='first_nsaid', from=1, to=30}\n",
        );
        let x = extend(&dict(), &d, &s).unwrap();
        assert_eq!(x.get("nsaids").unwrap().kind, VarType::Boolean);
        assert!(x
            .get("nsaids")
            .unwrap()
            .description
            .contains("drug concept set of 2 concepts with their descendants, less 1 excluded"));
        assert_eq!(inputs(&d, &["after".into()]), ["bleed", "nsaids"]);
        assert_ne!(fingerprint(&d, &s), fingerprint(&d, &BTreeMap::new()));
        for (text, want) in [
            (
                "[concept_sets.age]\ndomain='drug'\nconcepts=[1]",
                "already a variable of the data dictionary",
            ),
            (
                "[concept_sets.x]\ndomain='drug'\nconcepts=[]",
                "concept_sets.x lists no concepts",
            ),
            (
                "[concept_sets.x]\ndomain='drug'\nconcepts=[1]\nexclude=[-4]",
                "lists concept id -4",
            ),
        ] {
            let e = extend(&dict(), &BTreeMap::new(), &sets(text)).unwrap_err();
            assert!(e.message.contains(want), "{text}: {e}");
        }
        let e = extend(
            &dict(),
            &derived("[derived.nsaids]\ntype='date'\nfirst_date={event='bleed'}"),
            &s,
        )
        .unwrap_err();
        assert!(e.message.contains("or a concept set of the study"), "{e}");
    }

    #[test]
    fn refusals_name_the_field() {
        for (text, want) in [
            (
                "[derived.age]\ntype='integer'\ndays_between={from='start', to='index'}",
                "already a variable of the data dictionary",
            ),
            (
                "[derived.w]\ntype='boolean'\nwindow={event='bleed', origin='index', from=-2147483648, to=0}",
                "both within 36525 days of the origin",
            ),
            (
                "[derived.w]\ntype='integer'\nwindow={event='bleed', origin='index', from=1, to=3}",
                "derived.w is integer, but window gives a boolean",
            ),
            (
                "[derived.w]\ntype='boolean'\nwindow={event='age', origin='index', from=1, to=3}",
                "derived.w.window.event names \"age\", which is integer; it must be a dated event",
            ),
            (
                "[derived.w]\ntype='boolean'\nwindow={event='bleed', origin='bleed', from=1, to=3}",
                "derived.w.window.origin names \"bleed\", which is boolean; it must be a date",
            ),
            (
                "[derived.w]\ntype='boolean'\nwindow={event='bleed', origin='index', from=3, to=1}",
                "from must not be after to",
            ),
            (
                "[derived.w]\ntype='boolean'\nwindow={event='bleed', origin='nope', from=1, to=3}",
                "derived.w.window.origin: variable \"nope\" is not in the data dictionary",
            ),
            (
                "[derived.w]\ntype='integer'",
                "derived.w names no derivation",
            ),
            (
                "[derived.d]\ntype='integer'\nmin=0\ndays_between={from='start', to='index'}",
                "derived.d needs both min and max",
            ),
            (
                "[derived.W]\ntype='integer'\ndays_between={from='start', to='index'}",
                "derived variable name \"W\"",
            ),
            (
                "[derived.\"a\\u001b[8m\"]\ntype='integer'\ndays_between={from='start', to='index'}",
                "the name of a derived variable holds the control character U+001B",
            ),
            (
                "[derived.f]\ntype='integer'\nfirst_date={event='bleed'}",
                "derived.f is integer, but first_date gives a date",
            ),
            (
                "[derived.f]\ntype='date'\nfirst_date={event='bleed'}\n\
                 [derived.g]\ntype='date'\nfirst_date={event='f'}",
                "derived.g.first_date.event names \"f\", a variable the study derives",
            ),
            (
                "[derived.w]\ntype='boolean'\nwindow={event='bleed', origin='index', from=1, to=3}\n\
                 [derived.v]\ntype='boolean'\nwindow={event='w', origin='index', from=1, to=3}",
                "derived.v.window.event names \"w\", a variable the study derives",
            ),
            (
                "[derived.d]\ntype='integer'\ndays_between={from='start', to='index'}\n\
                 [derived.e]\ntype='integer'\ndays_between={from='d', to='index'}",
                "derived.e.days_between.from names \"d\", a variable the study derives",
            ),
        ] {
            let e = extend(&dict(), &derived(text), &BTreeMap::new()).unwrap_err();
            assert!(e.message.contains(want), "{text}: {e}");
        }
    }
}
