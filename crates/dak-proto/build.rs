//! Compiles proto/dak.proto with protox (pure Rust), so no `protoc` is needed.
//!
//! The interactive-message types also derive serde: the same structs are
//! the JSON of `dak bot serve`'s API and of `--json` output, so the wire,
//! the API and the limits cannot drift apart.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/dak.proto");
    let fds = protox::compile(["proto/dak.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    // serde for the JSON, and (the `openapi` feature) their OpenAPI schema.
    for t in [
        "Interactive",
        "Button",
        "ChoiceList",
        "ListSection",
        "ListRow",
    ] {
        config.type_attribute(
            format!(".dak.v1.{t}"),
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)] \
             #[cfg_attr(feature = \"openapi\", derive(utoipa::ToSchema))]",
        );
    }
    // The limits of `interactive.rs`, in the schema too, so a generated
    // client (and schemathesis) knows them.
    for (field, limits) in [
        ("Interactive.header", "max_length = 60"),
        ("Interactive.footer", "max_length = 60"),
        ("Interactive.buttons", "max_items = 3"),
        ("Button.id", "min_length = 1, max_length = 256"),
        ("Button.title", "min_length = 1, max_length = 20"),
        ("ChoiceList.button", "min_length = 1, max_length = 20"),
        ("ChoiceList.sections", "min_items = 1, max_items = 10"),
        ("ListSection.title", "max_length = 24"),
        ("ListSection.rows", "min_items = 1, max_items = 10"),
        ("ListRow.id", "min_length = 1, max_length = 256"),
        ("ListRow.title", "min_length = 1, max_length = 24"),
        ("ListRow.description", "max_length = 72"),
    ] {
        config.field_attribute(
            format!(".dak.v1.{field}"),
            format!("#[cfg_attr(feature = \"openapi\", schema({limits}))]"),
        );
    }
    // prost derives Eq itself only for messages without message fields.
    for t in ["Interactive", "ChoiceList", "ListSection"] {
        config.type_attribute(format!(".dak.v1.{t}"), "#[derive(Eq)]");
    }
    config.type_attribute(
        ".dak.v1.Choice",
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(deny_unknown_fields)]",
    );
    config.field_attribute(".dak.v1.Choice.message_id", "#[serde(with = \"hex\")]");
    config.field_attribute(
        ".dak.v1.Interactive.list",
        "#[serde(skip_serializing_if = \"Option::is_none\")]",
    );
    config.field_attribute(
        ".dak.v1.Interactive.buttons",
        "#[serde(skip_serializing_if = \"Vec::is_empty\")]",
    );
    // Keeps `Content`'s variants near one size (clippy's large_enum_variant).
    config.boxed(".dak.v1.Text.interactive");
    config.boxed(".dak.v1.HistoryMessage.interactive");
    config.boxed(".dak.v1.Text.choice");
    config.boxed(".dak.v1.HistoryMessage.choice");
    config.compile_fds(fds)?;
    Ok(())
}
