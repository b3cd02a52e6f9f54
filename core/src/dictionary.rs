//! The network data dictionary: the harmonised variables every node maps
//! to its local columns, with their types, units, public bounds and
//! categories. It is a versioned TOML file shared by the whole network.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    Integer,
    Float,
    Boolean,
    Categorical,
    Date,
}

impl VarType {
    pub fn as_str(self) -> &'static str {
        match self {
            VarType::Integer => "integer",
            VarType::Float => "float",
            VarType::Boolean => "boolean",
            VarType::Categorical => "categorical",
            VarType::Date => "date",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, VarType::Integer | VarType::Float)
    }

    /// Variables whose levels form the rows or columns of a table.
    pub fn is_discrete(self) -> bool {
        matches!(self, VarType::Boolean | VarType::Categorical)
    }
}

impl std::fmt::Display for VarType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Public bound of a variable; dates are written as TOML dates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    Number(f64),
    Date(toml::value::Datetime),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    #[serde(rename = "type")]
    pub kind: VarType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Bound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Bound>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(default)]
    pub description: String,
}

impl Variable {
    /// Numeric public bounds, when the variable has them.
    pub fn numeric_bounds(&self) -> Option<(f64, f64)> {
        match (&self.min, &self.max) {
            (Some(Bound::Number(lo)), Some(Bound::Number(hi))) => Some((*lo, *hi)),
            _ => None,
        }
    }

    /// Levels of a discrete variable in their fixed order: the dictionary's
    /// categories, or `false`, `true` for booleans.
    pub fn levels(&self) -> Vec<String> {
        match self.kind {
            VarType::Boolean => vec!["false".into(), "true".into()],
            VarType::Categorical => self.categories.clone(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dictionary {
    pub name: String,
    pub version: String,
    pub variables: BTreeMap<String, Variable>,
}

const CARDIOVASCULAR: &str = include_str!("../dictionaries/cardiovascular.toml");

/// Longest identifier accepted for a variable, study or node name.
pub const MAX_NAME_LEN: usize = 64;

/// True for names made of lowercase ASCII letters, digits, `_` and `-`,
/// starting with a letter: safe in file names, logs and (later) SQL
/// identifiers without quoting tricks.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= MAX_NAME_LEN
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// [`is_identifier`], refused with an error calling `name` `what` (such
/// as "variable name").
pub fn check_identifier(what: &str, name: &str) -> Result<()> {
    if is_identifier(name) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{what} \"{name}\" must start with a lowercase letter and hold only lowercase letters, digits, '_' or '-'"
    )))
}

impl Dictionary {
    /// The embedded cardiovascular registry dictionary used by the demo and
    /// as the default when no dictionary file is configured.
    pub fn cardiovascular() -> Self {
        Self::from_toml(CARDIOVASCULAR).expect("embedded dictionary is valid")
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let dict: Dictionary = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("data dictionary is not valid: {e}")))?;
        dict.validate()?;
        Ok(dict)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!(
                "cannot read data dictionary {}: {e} (check the path in your config)",
                path.display()
            ))
        })?;
        Self::from_toml(&text)
            .map_err(|e| Error::invalid(format!("{} (in {})", e.message, path.display())))
    }

    /// Loads `path`, or the embedded cardiovascular dictionary when `None`.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => Self::load(p),
            None => Ok(Self::cardiovascular()),
        }
    }

    pub fn validate(&self) -> Result<()> {
        crate::text::check("dictionary name", &self.name)?;
        crate::text::check("dictionary version", &self.version)?;
        if self.version.trim().is_empty() {
            return Err(Error::invalid("data dictionary has an empty version"));
        }
        if self.variables.is_empty() {
            return Err(Error::invalid("data dictionary defines no variables"));
        }
        for (i, (name, var)) in self.variables.iter().enumerate() {
            // Before any message below echoes the name or a label.
            crate::text::check(&format!("the name of dictionary variable {}", i + 1), name)?;
            let field = |f: &str| format!("variable \"{name}\" {f}");
            crate::text::check(&field("unit"), var.unit.as_deref().unwrap_or_default())?;
            crate::text::check(&field("description"), &var.description)?;
            crate::text::check_all(&field("categories"), &var.categories)?;
            check_identifier("variable name", name)?;
            match var.kind {
                VarType::Categorical => {
                    if var.categories.is_empty() {
                        return Err(Error::invalid(format!(
                            "categorical variable \"{name}\" lists no categories"
                        )));
                    }
                    let mut seen = std::collections::BTreeSet::new();
                    for c in &var.categories {
                        if c.is_empty() || !seen.insert(c) {
                            return Err(Error::invalid(format!(
                                "categorical variable \"{name}\" has an empty or repeated category \"{c}\""
                            )));
                        }
                    }
                }
                _ if !var.categories.is_empty() => {
                    return Err(Error::invalid(format!(
                        "variable \"{name}\" is {} and cannot list categories",
                        var.kind
                    )));
                }
                _ => {}
            }
            if var.kind.is_numeric() {
                if let Some((lo, hi)) = var.numeric_bounds() {
                    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                        return Err(Error::invalid(format!(
                            "numeric variable \"{name}\" needs finite bounds with min < max"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Looks a variable up, suggesting the closest name when it is unknown.
    pub fn get(&self, name: &str) -> Result<&Variable> {
        self.variables.get(name).ok_or_else(|| {
            let hint = self
                .closest(name)
                .map(|c| format!(" (did you mean \"{c}\"?)"))
                .unwrap_or_else(|| " (`plexus dictionary` lists the variables)".into());
            Error::invalid(format!(
                "variable \"{name}\" is not in the data dictionary{hint}"
            ))
        })
    }

    /// The variable name nearest to `name`, for "did you mean" hints.
    pub fn closest(&self, name: &str) -> Option<&str> {
        self.variables
            .keys()
            .map(|k| (strsim::jaro_winkler(name, k), k.as_str()))
            .filter(|(score, _)| *score > 0.75)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| k)
    }

    /// Identifies this dictionary's content, so nodes and coordinator can
    /// tell they speak of the same variables.
    pub fn fingerprint(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("dictionary serialises");
        format!(
            "{}@{}",
            self.version,
            &crate::hash::sha256_hex(&bytes)[..12]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_dictionary_loads() {
        let d = Dictionary::cardiovascular();
        assert_eq!(d.get("age").unwrap().kind, VarType::Integer);
        assert_eq!(
            d.get("smoking").unwrap().levels(),
            ["never", "former", "current"]
        );
        assert_eq!(d.get("death").unwrap().levels(), ["false", "true"]);
        assert_eq!(d.get("bmi").unwrap().numeric_bounds(), Some((12.0, 70.0)));
    }

    #[test]
    fn unknown_variable_suggests_closest() {
        let d = Dictionary::cardiovascular();
        let e = d.get("smokin").unwrap_err();
        assert_eq!(
            e.message,
            "variable \"smokin\" is not in the data dictionary (did you mean \"smoking\"?)"
        );
    }

    #[test]
    fn rejects_control_characters_naming_the_field() {
        let toml = "name='x'\nversion='1'\n[variables.a]\ntype='categorical'\ncategories=['yes', \"no\\u001b[8m\"]\n";
        let e = Dictionary::from_toml(toml).unwrap_err();
        assert!(
            e.message
                .starts_with("variable \"a\" categories[1] holds the control character U+001B"),
            "{e}"
        );
        let toml =
            "name='x'\nversion='1'\n[variables.a]\ntype='float'\ndescription=\"kg\\u202e\"\n";
        let e = Dictionary::from_toml(toml).unwrap_err();
        assert!(e.message.contains("description holds"), "{e}");
        assert!(e.message.contains("U+202E"), "{e}");
    }

    #[test]
    fn rejects_categorical_without_categories() {
        let e = Dictionary::from_toml("name='x'\nversion='1'\n[variables.a]\ntype='categorical'\n")
            .unwrap_err();
        assert!(e.message.contains("lists no categories"), "{e}");
    }

    #[test]
    fn rejects_unknown_fields() {
        let e =
            Dictionary::from_toml("name='x'\nversion='1'\ncolour=1\n[variables.a]\ntype='float'\n")
                .unwrap_err();
        assert!(e.message.contains("colour"), "{e}");
    }
}
