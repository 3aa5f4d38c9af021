//! Message templates: named texts with numbered parameters (`{{1}}`,
//! `{{2}}`, …), the only thing a bot may send to a user who has not
//! written in the last 24 hours (as WhatsApp's Business API allows).
//!
//! They live in a TOML file the service's team writes and reviews:
//!
//! ```toml
//! [certificate_ready]
//! text = "Your {{1}} certificate (application {{2}}) is ready to download."
//! ```
//!
//! Invariant: a filled template is the template's text with each
//! placeholder replaced by a parameter that is short and has no line
//! breaks or control characters, so a template cannot be turned into a
//! free-form message by its parameters.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

pub const MAX_PARAM_CHARS: usize = 256;
pub const MAX_TEMPLATES: usize = 1000;

#[derive(Debug, Default)]
pub struct Templates {
    by_name: BTreeMap<String, Template>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Template {
    text: String,
    #[serde(skip)]
    params: usize,
}

impl Templates {
    pub fn load(path: &Path) -> Result<Templates> {
        let raw = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read templates {}", path.display()))?;
        Self::parse(&raw).with_context(|| format!("in templates {}", path.display()))
    }

    pub fn parse(raw: &str) -> Result<Templates> {
        let mut by_name: BTreeMap<String, Template> = toml::from_str(raw)?;
        if by_name.len() > MAX_TEMPLATES {
            bail!("more than {MAX_TEMPLATES} templates");
        }
        for (name, t) in by_name.iter_mut() {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                bail!("template name {name:?}: use 1 to 64 of a-z, 0-9 and _");
            }
            if t.text.trim().is_empty() {
                bail!("template {name} has no text");
            }
            t.params = placeholders(&t.text).with_context(|| format!("template {name}"))?;
        }
        Ok(Templates { by_name })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The template's text with `params` in its placeholders.
    pub fn fill(&self, name: &str, params: &[String]) -> Result<String, String> {
        let t = self
            .by_name
            .get(name)
            .ok_or_else(|| format!("no template named {name:?}"))?;
        if params.len() != t.params {
            return Err(format!(
                "template {name} takes {} parameter(s), not {}",
                t.params,
                params.len()
            ));
        }
        for (i, p) in params.iter().enumerate() {
            if p.trim().is_empty()
                || p.chars().count() > MAX_PARAM_CHARS
                || p.chars().any(dak_proto::interactive::is_hidden)
            {
                return Err(format!(
                    "parameter {} must be 1 to {MAX_PARAM_CHARS} characters on one line",
                    i + 1
                ));
            }
        }
        let mut out = String::with_capacity(t.text.len());
        let mut rest = t.text.as_str();
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").expect("checked by placeholders");
            let n: usize = after[..end].parse().expect("checked by placeholders");
            out.push_str(&params[n - 1]);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// How many parameters a text takes: its placeholders must be `{{1}}` to
/// `{{n}}`, each at least once.
fn placeholders(text: &str) -> Result<usize> {
    let mut seen = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("an unclosed {{{{");
        };
        let n: usize = after[..end]
            .parse()
            .ok()
            .filter(|n| (1..=20).contains(n))
            .with_context(|| {
                format!(
                    "{{{{{}}}}} is not a placeholder {{{{1}}}} to {{{{20}}}}",
                    &after[..end]
                )
            })?;
        seen.push(n);
        rest = &after[end + 2..];
    }
    seen.sort_unstable();
    seen.dedup();
    if seen.iter().enumerate().any(|(i, n)| *n != i + 1) {
        bail!("placeholders must be numbered from {{{{1}}}} without gaps");
    }
    Ok(seen.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_is_filled_with_one_line_parameters() {
        let t = Templates::parse(
            "[ready]\ntext = \"Your {{1}} certificate ({{2}}) is ready. {{1}}!\"\n",
        )
        .unwrap();
        assert_eq!(
            t.fill("ready", &["birth".into(), "A-7".into()]).unwrap(),
            "Your birth certificate (A-7) is ready. birth!"
        );
        assert!(
            t.fill("ready", &["birth".into()])
                .unwrap_err()
                .contains("takes 2")
        );
        assert!(
            t.fill("ready", &["a\nb".into(), "c".into()])
                .unwrap_err()
                .contains("one line")
        );
        assert!(t.fill("other", &[]).unwrap_err().contains("no template"));
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert!(Templates::parse("[a]\ntext = \"{{2}}\"\n").is_err());
        assert!(Templates::parse("[a]\ntext = \"{{x}}\"\n").is_err());
        assert!(Templates::parse("[a]\ntext = \"{{1\"\n").is_err());
        assert!(Templates::parse("[A-b]\ntext = \"x\"\n").is_err());
        assert!(Templates::parse("[a]\ntext = \"x\"\nother = 1\n").is_err());
    }
}
