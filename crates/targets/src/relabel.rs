//! Relabelling with the semantics of Prometheus's `relabel_config` (and Alloy's
//! `discovery.relabel` rules).
//!
//! A [`RelabelConfig`] is a rule as written by a user (all fields with Prometheus's defaults);
//! [`RelabelRule::new`] validates it and compiles its regex, anchored as `^(?:regex)$`.
//! [`relabel`] applies rules in order to one label set and returns `None` when a rule drops
//! the target.

use std::fmt;

use md5::{Digest, Md5};
use regex::Regex;

use crate::Error;
use crate::labels::{Labels, is_valid_label_name};

/// The default `separator`.
pub const DEFAULT_SEPARATOR: &str = ";";
/// The default `regex`.
pub const DEFAULT_REGEX: &str = "(.*)";
/// The default `replacement`.
pub const DEFAULT_REPLACEMENT: &str = "$1";

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(rename_all = "lowercase")
)]
pub enum Action {
    /// Match `regex` against the joined source values; on a match set `target_label` to the
    /// expanded `replacement` (an empty result removes the label). No match: no change.
    #[default]
    Replace,
    /// Drop the target unless `regex` matches the joined source values.
    Keep,
    /// Drop the target if `regex` matches the joined source values.
    Drop,
    /// Drop the target unless the joined source values equal the value of `target_label`.
    KeepEqual,
    /// Drop the target if the joined source values equal the value of `target_label`.
    DropEqual,
    /// Set `target_label` to the md5 of the joined source values modulo `modulus`.
    HashMod,
    /// Copy every label whose name matches `regex` to the name given by `replacement`.
    LabelMap,
    /// Remove every label whose name matches `regex`.
    LabelDrop,
    /// Remove every label whose name does not match `regex`.
    LabelKeep,
    /// Set `target_label` to the lower-cased joined source values.
    Lowercase,
    /// Set `target_label` to the upper-cased joined source values.
    Uppercase,
}

impl Action {
    /// Every action, in documentation order.
    pub const ALL: [Action; 11] = [
        Action::Replace,
        Action::Keep,
        Action::Drop,
        Action::KeepEqual,
        Action::DropEqual,
        Action::HashMod,
        Action::LabelMap,
        Action::LabelDrop,
        Action::LabelKeep,
        Action::Lowercase,
        Action::Uppercase,
    ];

    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One relabelling rule as configured, before validation. Every field defaults as in
/// Prometheus.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(default, deny_unknown_fields)
)]
pub struct RelabelConfig {
    /// Labels whose values are joined with `separator` and matched against `regex`.
    pub source_labels: Vec<String>,
    /// Joins the source values (default `;`).
    pub separator: String,
    /// The pattern, fully anchored (default `(.*)`).
    pub regex: String,
    /// The label written by `replace`, `hashmod`, `lowercase`, `uppercase`, or compared by
    /// `keepequal`/`dropequal`. For `replace` it may reference capture groups.
    pub target_label: String,
    /// The value written by `replace`, or the new name for `labelmap`; `$1`, `${1}` and
    /// `$name` expand to capture groups, `$$` is a literal `$` (default `$1`).
    pub replacement: String,
    /// The modulus of `hashmod` (required, non-zero, for that action).
    pub modulus: u64,
    /// What the rule does (default `replace`).
    pub action: Action,
}

impl Default for RelabelConfig {
    fn default() -> Self {
        Self {
            source_labels: Vec::new(),
            separator: DEFAULT_SEPARATOR.to_owned(),
            regex: DEFAULT_REGEX.to_owned(),
            target_label: String::new(),
            replacement: DEFAULT_REPLACEMENT.to_owned(),
            modulus: 0,
            action: Action::Replace,
        }
    }
}

/// A validated rule with its compiled, anchored regex.
#[derive(Debug, Clone)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(try_from = "RelabelConfig")
)]
pub struct RelabelRule {
    config: RelabelConfig,
    regex: Regex,
}

/// Upper bound on the compiled size of one rule's regex.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl RelabelRule {
    /// Validates `config` as Prometheus does and compiles its regex.
    pub fn new(config: RelabelConfig) -> Result<Self, Error> {
        validate(&config).map_err(|problem| Error::InvalidRelabelRule {
            rule: None,
            action: config.action,
            problem,
        })?;
        let regex = regex::RegexBuilder::new(&format!("^(?:{})$", config.regex))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| Error::InvalidRelabelRule {
                rule: None,
                action: config.action,
                problem: format!(
                    "regex {:?} does not compile ({}); use RE2/Rust regex syntax, e.g. \"(.*)\"",
                    config.regex,
                    regex_error_detail(&e)
                ),
            })?;
        Ok(Self { config, regex })
    }

    /// The rule as configured.
    pub fn config(&self) -> &RelabelConfig {
        &self.config
    }

    /// Applies the rule to `labels`; returns `false` when the target is to be dropped.
    pub fn apply(&self, labels: &mut Labels) -> bool {
        let c = &self.config;
        let joined = || {
            c.source_labels
                .iter()
                .map(|n| labels.value(n))
                .collect::<Vec<_>>()
                .join(&c.separator)
        };
        match c.action {
            Action::Keep => return self.regex.is_match(&joined()),
            Action::Drop => return !self.regex.is_match(&joined()),
            Action::KeepEqual => return labels.value(&c.target_label) == joined(),
            Action::DropEqual => return labels.value(&c.target_label) != joined(),
            Action::Replace => {
                let value = joined();
                if let Some(caps) = self.regex.captures(&value) {
                    let mut target = String::new();
                    caps.expand(&c.target_label, &mut target);
                    if is_valid_label_name(&target) {
                        let mut result = String::new();
                        caps.expand(&c.replacement, &mut result);
                        labels.set(target, result);
                    }
                }
            }
            Action::Lowercase => {
                let value = joined().to_lowercase();
                labels.set(c.target_label.clone(), value);
            }
            Action::Uppercase => {
                let value = joined().to_uppercase();
                labels.set(c.target_label.clone(), value);
            }
            Action::HashMod => {
                let value = joined();
                let digest = Md5::digest(value.as_bytes());
                let mut low = [0u8; 8];
                low.copy_from_slice(&digest[8..16]);
                // `validate` guarantees a non-zero modulus.
                let m = u64::from_be_bytes(low) % c.modulus.max(1);
                labels.set(c.target_label.clone(), m.to_string());
            }
            Action::LabelMap => {
                let snapshot: Vec<(String, String)> = labels
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                for (name, value) in snapshot {
                    if let Some(caps) = self.regex.captures(&name) {
                        let mut new_name = String::new();
                        caps.expand(&c.replacement, &mut new_name);
                        labels.set(new_name, value);
                    }
                }
            }
            Action::LabelDrop => labels.retain(|name, _| !self.regex.is_match(name)),
            Action::LabelKeep => labels.retain(|name, _| self.regex.is_match(name)),
        }
        true
    }
}

impl TryFrom<RelabelConfig> for RelabelRule {
    type Error = Error;
    fn try_from(config: RelabelConfig) -> Result<Self, Error> {
        RelabelRule::new(config)
    }
}

/// Validates and compiles `configs`; an error names the rule by its 1-based position.
pub fn compile(
    configs: impl IntoIterator<Item = RelabelConfig>,
) -> Result<Vec<RelabelRule>, Error> {
    configs
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            RelabelRule::new(c).map_err(|e| match e {
                Error::InvalidRelabelRule {
                    action, problem, ..
                } => Error::InvalidRelabelRule {
                    rule: Some(i + 1),
                    action,
                    problem,
                },
                other => other,
            })
        })
        .collect()
}

/// Applies `rules` in order; `None` when a rule dropped the target. An empty result also
/// counts as dropped, as in Prometheus.
pub fn relabel(rules: &[RelabelRule], mut labels: Labels) -> Option<Labels> {
    for rule in rules {
        if !rule.apply(&mut labels) {
            return None;
        }
    }
    (!labels.is_empty()).then_some(labels)
}

/// What is wrong with a regex, in one line: the `error: ...` line of the regex crate's
/// multi-line message (whose first line is only "regex parse error:"), or the size limit.
fn regex_error_detail(e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => {
            format!("it compiles to more than {limit} bytes; make it simpler")
        }
        other => {
            let text = other.to_string();
            text.lines()
                .find_map(|l| l.trim().strip_prefix("error:"))
                .map(str::trim)
                .or_else(|| text.lines().map(str::trim).rfind(|l| !l.is_empty()))
                .unwrap_or("invalid syntax")
                .to_owned()
        }
    }
}

/// A label name, or a template that may produce one (`$1`, `${name}`).
fn is_label_template(s: &str) -> bool {
    s.contains('$') || is_valid_label_name(s)
}

/// Prometheus's checks, each with what to change.
fn validate(c: &RelabelConfig) -> Result<(), String> {
    let a = c.action;
    let needs_target = matches!(
        a,
        Action::Replace
            | Action::HashMod
            | Action::Lowercase
            | Action::Uppercase
            | Action::KeepEqual
            | Action::DropEqual
    );
    if needs_target && c.target_label.is_empty() {
        return Err(format!(
            "action \"{a}\" needs `target_label`: set it to the label to write"
        ));
    }
    if a == Action::HashMod && c.modulus == 0 {
        return Err("action \"hashmod\" needs a non-zero `modulus`, e.g. modulus = 8".to_owned());
    }
    if a == Action::Replace && !is_label_template(&c.target_label) {
        return Err(format!(
            "`target_label` {:?} is not a valid label name: use letters, digits and '_', not starting with a digit",
            c.target_label
        ));
    }
    if matches!(
        a,
        Action::HashMod
            | Action::Lowercase
            | Action::Uppercase
            | Action::KeepEqual
            | Action::DropEqual
    ) && !is_valid_label_name(&c.target_label)
    {
        return Err(format!(
            "`target_label` {:?} is not a valid label name: use letters, digits and '_', not starting with a digit",
            c.target_label
        ));
    }
    if a == Action::LabelMap && !is_label_template(&c.replacement) {
        return Err(format!(
            "`replacement` {:?} is not a valid label name or template: use e.g. \"$1\" or \"k8s_$1\"",
            c.replacement
        ));
    }
    if matches!(a, Action::LabelDrop | Action::LabelKeep)
        && (!c.source_labels.is_empty()
            || !c.target_label.is_empty()
            || c.modulus != 0
            || c.separator != DEFAULT_SEPARATOR
            || c.replacement != DEFAULT_REPLACEMENT)
    {
        return Err(format!(
            "action \"{a}\" uses only `regex` (matched against label names): remove source_labels, target_label, separator, replacement and modulus"
        ));
    }
    if matches!(a, Action::KeepEqual | Action::DropEqual)
        && (c.modulus != 0
            || c.separator != DEFAULT_SEPARATOR
            || c.replacement != DEFAULT_REPLACEMENT
            || c.regex != DEFAULT_REGEX)
    {
        return Err(format!(
            "action \"{a}\" uses only `source_labels` and `target_label`: remove regex, separator, replacement and modulus"
        ));
    }
    Ok(())
}
