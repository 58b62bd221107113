//! Every example in `docs/policy.md` is true: each ```toml block parses, its
//! `[[test]]` blocks pass, and the error shown is the one `render` prints.

#![allow(clippy::unwrap_used, reason = "test code")]

use weft_policy::Inventory;

const DOC: &str = include_str!("../../../docs/policy.md");

/// The bodies of the fenced blocks of `lang` (a fence is "```lang" alone on a line).
fn blocks(lang: &str) -> Vec<(usize, String)> {
    let fence = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in DOC.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == fence => current = Some((i + 2, String::new())),
            None => {}
            Some(_) if line.trim_end() == "```" => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "docs/policy.md: unclosed ```{lang} block"
    );
    out
}

#[test]
fn every_toml_example_parses_and_its_tests_pass() {
    let examples = blocks("toml");
    assert!(
        examples.len() >= 6,
        "found only {} examples",
        examples.len()
    );
    for (line, text) in &examples {
        let policy = weft_policy::parse(text).unwrap_or_else(|e| {
            panic!(
                "docs/policy.md: the example at line {line} does not parse:\n{}",
                e.render("example", text)
            )
        });
        let failures = policy.run_tests(&Inventory::default());
        assert!(
            failures.is_empty(),
            "docs/policy.md: the example at line {line} fails its tests: {failures:?}"
        );
    }
}

#[test]
fn the_error_example_is_what_a_bad_policy_prints() {
    let text = "[[rule]]\naction = \"allow\"\nfrom = \"*\"\nto = \"*\"\nproto = \"tpc\"\n";
    let shown = weft_policy::parse(text)
        .unwrap_err()
        .render("policy.toml", text);
    let documented = blocks("text");
    assert!(
        documented.iter().any(|(_, b)| b.trim_end() == shown),
        "docs/policy.md shows no block equal to:\n{shown}"
    );
}
