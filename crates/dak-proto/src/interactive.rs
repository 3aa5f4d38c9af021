//! Interactive messages: a business's reply buttons and lists, and the
//! user's `Choice` that answers them (docs/PROTOCOL.md §16).
//!
//! The limits are WhatsApp's (its Cloud API documents the same numbers),
//! so a service written for it fits, and so that a bot cannot fill a
//! screen: 1–3 buttons, or 1–10 rows in 1–10 sections, never both; short
//! titles; ids unique within the message. A receiving client checks them
//! after it decrypts (`validate_content`) and refuses the message rather
//! than render a malformed one; `dak bot serve` checks them before it
//! sends, so an honest message is never refused.
//!
//! Titles and ids must not be blank or hold control characters: a title is
//! shown on a button and sent back as the body of the answer, so a line
//! break or a bidi override in it could make the answer look like another.

use crate::v1;
use crate::{FrameError, MESSAGE_ID_BYTES};

pub const MAX_BUTTONS: usize = 3;
pub const MAX_BUTTON_TITLE_CHARS: usize = 20;
pub const MAX_LIST_ROWS: usize = 10;
pub const MAX_LIST_SECTIONS: usize = 10;
pub const MAX_SECTION_TITLE_CHARS: usize = 24;
pub const MAX_ROW_TITLE_CHARS: usize = 24;
pub const MAX_ROW_DESCRIPTION_CHARS: usize = 72;
pub const MAX_HEADER_CHARS: usize = 60;
pub const MAX_FOOTER_CHARS: usize = 60;
/// A button's or row's id, chosen by the business and sent back to it.
pub const MAX_CHOICE_ID_BYTES: usize = 256;
/// The body that goes with buttons or a list.
pub const MAX_INTERACTIVE_BODY_CHARS: usize = 1024;

fn bad(what: impl Into<String>) -> FrameError {
    FrameError::invalid(v1::ErrorCode::BadRequest, what)
}

/// A visible string: at most `max` characters, none of them a control or a
/// bidi override; `required` ones must not be blank.
fn label(name: &str, v: &str, max: usize, required: bool) -> Result<(), FrameError> {
    if v.len() > max * 4 || v.chars().count() > max {
        return Err(bad(format!("{name} is longer than {max} characters")));
    }
    if required && v.trim().is_empty() {
        return Err(bad(format!("{name} is empty")));
    }
    if v.chars().any(is_hidden) {
        return Err(bad(format!("{name} holds a control character")));
    }
    Ok(())
}

/// Controls, line and paragraph separators, and the bidi formatting
/// characters and marks (which reorder what follows them on screen). Not
/// every format character: the zero-width joiners are part of Bengali,
/// Hindi and emoji sequences.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{061C}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{FEFF}'
        )
}

fn choice_id(name: &str, v: &str) -> Result<(), FrameError> {
    if v.is_empty() || v.len() > MAX_CHOICE_ID_BYTES {
        return Err(bad(format!(
            "{name} must be 1 to {MAX_CHOICE_ID_BYTES} bytes"
        )));
    }
    if v.chars().any(is_hidden) {
        return Err(bad(format!("{name} holds a control character")));
    }
    Ok(())
}

/// The rules of an `Interactive` (the `Text.body` beside it is checked by
/// `validate_interactive_body`).
pub fn validate_interactive(i: &v1::Interactive) -> Result<(), FrameError> {
    label("interactive.header", &i.header, MAX_HEADER_CHARS, false)?;
    label("interactive.footer", &i.footer, MAX_FOOTER_CHARS, false)?;
    let mut ids: Vec<&str> = Vec::new();
    match (&i.buttons[..], &i.list) {
        ([], None) => return Err(bad("an interactive message needs buttons or a list")),
        ([_, ..], Some(_)) => {
            return Err(bad(
                "an interactive message has buttons or a list, not both",
            ));
        }
        (buttons, None) => {
            if buttons.len() > MAX_BUTTONS {
                return Err(bad(format!("more than {MAX_BUTTONS} buttons")));
            }
            for b in buttons {
                choice_id("button.id", &b.id)?;
                label("button.title", &b.title, MAX_BUTTON_TITLE_CHARS, true)?;
                ids.push(&b.id);
            }
            // Two buttons with one title could not be told apart in the answer.
            let mut titles: Vec<&str> = buttons.iter().map(|b| b.title.trim()).collect();
            titles.sort_unstable();
            if titles.windows(2).any(|w| w[0] == w[1]) {
                return Err(bad("two buttons have the same title"));
            }
        }
        ([], Some(list)) => {
            label("list.button", &list.button, MAX_BUTTON_TITLE_CHARS, true)?;
            if list.sections.is_empty() || list.sections.len() > MAX_LIST_SECTIONS {
                return Err(bad(format!("a list has 1 to {MAX_LIST_SECTIONS} sections")));
            }
            let many = list.sections.len() > 1;
            let mut rows = 0usize;
            for s in &list.sections {
                label("section.title", &s.title, MAX_SECTION_TITLE_CHARS, many)?;
                if s.rows.is_empty() {
                    return Err(bad("a list section has no rows"));
                }
                rows += s.rows.len();
                if rows > MAX_LIST_ROWS {
                    return Err(bad(format!("a list has more than {MAX_LIST_ROWS} rows")));
                }
                for r in &s.rows {
                    choice_id("row.id", &r.id)?;
                    label("row.title", &r.title, MAX_ROW_TITLE_CHARS, true)?;
                    label(
                        "row.description",
                        &r.description,
                        MAX_ROW_DESCRIPTION_CHARS,
                        false,
                    )?;
                    ids.push(&r.id);
                }
            }
        }
    }
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad("two choices have the same id"));
    }
    Ok(())
}

/// The text an `Interactive` goes with: required, and shorter than a
/// plain text may be.
pub fn validate_interactive_body(body: &str) -> Result<(), FrameError> {
    if body.len() > MAX_INTERACTIVE_BODY_CHARS * 4
        || body.chars().count() > MAX_INTERACTIVE_BODY_CHARS
    {
        return Err(bad(format!(
            "the text of an interactive message is longer than {MAX_INTERACTIVE_BODY_CHARS} characters"
        )));
    }
    if body.trim().is_empty() {
        return Err(bad("an interactive message needs a text"));
    }
    Ok(())
}

/// An answer: the message it answers and the id chosen. The receiver
/// checks it against the message it holds (`Interactive::find`).
pub fn validate_choice(c: &v1::Choice) -> Result<(), FrameError> {
    if c.message_id.len() != MESSAGE_ID_BYTES {
        return Err(bad(format!(
            "choice.message_id must be {MESSAGE_ID_BYTES} bytes"
        )));
    }
    choice_id("choice.id", &c.id)
}

impl v1::Interactive {
    /// The title of the button or row with this id.
    pub fn find(&self, id: &str) -> Option<&str> {
        self.buttons
            .iter()
            .map(|b| (&b.id, &b.title))
            .chain(
                self.list
                    .iter()
                    .flat_map(|l| &l.sections)
                    .flat_map(|s| &s.rows)
                    .map(|r| (&r.id, &r.title)),
            )
            .find(|(i, _)| *i == id)
            .map(|(_, t)| t.as_str())
    }

    /// The choices in the order shown, numbered from 1 by clients that
    /// cannot tap (`dak choose CHAT MSG N`): (id, title).
    pub fn choices(&self) -> Vec<(&str, &str)> {
        self.buttons
            .iter()
            .map(|b| (b.id.as_str(), b.title.as_str()))
            .chain(
                self.list
                    .iter()
                    .flat_map(|l| &l.sections)
                    .flat_map(|s| &s.rows)
                    .map(|r| (r.id.as_str(), r.title.as_str())),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn button(id: &str, title: &str) -> v1::Button {
        v1::Button {
            id: id.into(),
            title: title.into(),
        }
    }

    fn buttons(b: Vec<v1::Button>) -> v1::Interactive {
        v1::Interactive {
            buttons: b,
            ..Default::default()
        }
    }

    fn list(rows: usize, sections: usize) -> v1::Interactive {
        v1::Interactive {
            list: Some(v1::ChoiceList {
                button: "Stations".into(),
                sections: (0..sections)
                    .map(|s| v1::ListSection {
                        title: format!("Line {s}"),
                        rows: (0..rows)
                            .map(|r| v1::ListRow {
                                id: format!("{s}-{r}"),
                                title: format!("Station {r}"),
                                description: String::new(),
                            })
                            .collect(),
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn buttons_and_lists_within_the_limits_pass() {
        validate_interactive(&buttons(vec![button("yes", "Yes"), button("no", "No")])).unwrap();
        validate_interactive(&list(5, 2)).unwrap();
        validate_interactive(&list(10, 1)).unwrap();
        assert_eq!(list(2, 1).find("0-1"), Some("Station 1"));
        assert_eq!(list(2, 2).choices().len(), 4);
    }

    #[test]
    fn each_limit_is_refused_with_its_name() {
        let err = |i: v1::Interactive| validate_interactive(&i).unwrap_err().to_string();
        assert!(err(buttons(vec![])).contains("needs buttons or a list"));
        let four = (0..4)
            .map(|n| button(&n.to_string(), &n.to_string()))
            .collect();
        assert!(err(buttons(four)).contains("more than 3 buttons"));
        assert!(err(buttons(vec![button("a", &"x".repeat(21))])).contains("button.title"));
        assert!(err(buttons(vec![button("", "Yes")])).contains("button.id"));
        assert!(err(buttons(vec![button("a", "  ")])).contains("empty"));
        assert!(err(buttons(vec![button("a", "Yes\nNo")])).contains("control"));
        assert!(err(buttons(vec![button("a", "\u{202E}seY")])).contains("control"));
        assert!(err(buttons(vec![button("a", "Yes\u{2028}No")])).contains("control"));
        assert!(err(buttons(vec![button("a", "\u{200F}Yes")])).contains("control"));
        // Joiners belong to Indic scripts: "ক্‍ষ" and "नमस्‍ते" pass.
        validate_interactive(&buttons(vec![
            button("a", "ক্\u{200D}ষ"),
            button("b", "नमस्\u{200C}ते"),
        ]))
        .unwrap();
        assert!(err(buttons(vec![button("a", "Yes"), button("a", "No")])).contains("same id"));
        assert!(err(buttons(vec![button("a", "Yes"), button("b", "Yes")])).contains("same title"));
        assert!(err(list(11, 1)).contains("more than 10 rows"));
        assert!(err(list(6, 2)).contains("more than 10 rows"));
        let mut both = list(1, 1);
        both.buttons.push(button("a", "A"));
        assert!(err(both).contains("not both"));
        let mut untitled = list(1, 2);
        untitled.list.as_mut().unwrap().sections[1].title.clear();
        assert!(err(untitled).contains("section.title"));
    }

    /// Writes fuzz/seeds/interactive: run with `--ignored` after a change
    /// to `Interactive`, and commit the files.
    #[test]
    #[ignore]
    fn write_interactive_seeds() {
        use prost::Message;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/interactive");
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = buttons(vec![button("yes", "Confirm"), button("no", "Cancel")]);
        b.header = "Dak Rail".into();
        b.footer = "Fare ₹15".into();
        std::fs::write(dir.join("buttons"), b.encode_to_vec()).unwrap();
        std::fs::write(dir.join("list"), list(3, 2).encode_to_vec()).unwrap();
    }

    #[test]
    fn a_choice_names_a_message_and_an_id() {
        let c = v1::Choice {
            message_id: vec![1; 16],
            id: "yes".into(),
        };
        validate_choice(&c).unwrap();
        assert!(
            validate_choice(&v1::Choice {
                id: String::new(),
                ..c.clone()
            })
            .is_err()
        );
        assert!(
            validate_choice(&v1::Choice {
                message_id: vec![1; 3],
                ..c
            })
            .is_err()
        );
        assert!(validate_interactive_body("").is_err());
        assert!(validate_interactive_body(&"x".repeat(1025)).is_err());
    }
}
