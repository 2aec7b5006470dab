//! Table tests of the filter language: every case of containerd's `filters/filter_test.go`
//! (same corpus, same inputs, same error strings), scanner corner cases traced through
//! containerd's scanner, the snapshot adaptor rules, and the checkWalk examples of
//! containerd's snapshotter test suite run against `Info` values.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::SystemTime;

use snapshot_core::filter::{Fields, Filter, FilterSet};
use snapshot_core::{labels, ErrorKind, Info, Kind, Labels};

/// An entry of containerd's filter test corpus (`cEntry`).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    name: &'static str,
    other: &'static str,
    labels: BTreeMap<String, String>,
}

impl Fields for Entry {
    /// containerd's test adaptor: `name` and `other` are present when non-empty, labels
    /// when the joined key exists.
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path[0].as_str() {
            "name" if !self.name.is_empty() => Some(self.name.into()),
            "other" if !self.other.is_empty() => Some(self.other.into()),
            "labels" => self
                .labels
                .get(&path[1..].join("."))
                .map(|v| v.as_str().into()),
            _ => None,
        }
    }
}

fn entry(name: &'static str, other: &'static str, l: &[(&str, &str)]) -> Entry {
    Entry {
        name,
        other,
        labels: labels(l.iter().copied()),
    }
}

fn corpus() -> Vec<Entry> {
    vec![
        entry("foo", "", &[("foo", "true")]),
        entry("bar", "", &[]),
        entry(
            "foo",
            "",
            &[("foo", "present"), ("more complex label", "present")],
        ),
        entry("bar", "", &[("bar", "true")]),
        entry(
            "fooer",
            "",
            &[("more complex label with \\ and \"", "present")],
        ),
        entry(
            "fooer",
            "",
            &[("more complex label with \\ and \".post", "present")],
        ),
        entry("baz", "too complex, yo", &[]),
        entry("bazo", "abc", &[]),
        entry("compound", "", &[("foo", "omg_asdf.asdf-qwer")]),
    ]
}

enum Want {
    /// Indexes into the corpus of the entries that match.
    Matches(&'static [usize]),
    /// The exact error string containerd's `Parse` returns.
    Error(&'static str),
}

/// Every case of containerd's `TestFilters`, in its order.
const CONTAINERD_CASES: &[(&str, &str, Want)] = &[
    ("Empty", "", Want::Matches(&[0, 1, 2, 3, 4, 5, 6, 7, 8])),
    ("Present", "name", Want::Matches(&[0, 1, 2, 3, 4, 5, 6, 7, 8])),
    ("LabelPresent", "labels.foo", Want::Matches(&[0, 2, 8])),
    ("NameAndLabelPresent", "labels.foo,name", Want::Matches(&[0, 2, 8])),
    ("LabelValue", "labels.foo==true", Want::Matches(&[0])),
    ("LabelValuePunctuated", "labels.foo==omg_asdf.asdf-qwer", Want::Matches(&[8])),
    (
        "LabelValueNoAltQuoting",
        "labels.|foo|==omg_asdf.asdf-qwer",
        Want::Error(
            "filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered",
        ),
    ),
    ("Name", "name==bar", Want::Matches(&[1, 3])),
    ("NameNotEqual", "name!=bar", Want::Matches(&[0, 2, 4, 5, 6, 7, 8])),
    ("NameAndLabelPresent", "name==bar,labels.bar", Want::Matches(&[3])),
    ("QuotedValue", "other==\"too complex, yo\"", Want::Matches(&[6])),
    ("RegexpValue", "other~=[abc]+,name!=foo", Want::Matches(&[6, 7])),
    ("RegexpQuotedValue", "other~=/[abc]+/,name!=foo", Want::Matches(&[6, 7])),
    ("RegexpQuotedValue", "other~=/[abc]{1,2}/,name!=foo", Want::Matches(&[6, 7])),
    ("RegexpQuotedValueGarbage", "other~=/[abc]{0,1}\"\\//,name!=foo", Want::Matches(&[])),
    ("NameAndLabelValue", "name==bar,labels.bar==true", Want::Matches(&[3])),
    ("NameAndLabelValueNoMatch", "name==bar,labels.bar==wrong", Want::Matches(&[])),
    ("LabelQuotedFieldPathPresent", r#"name==foo,labels."more complex label""#, Want::Matches(&[2])),
    (
        "LabelQuotedFieldPathPresentWithQuoted",
        r#"labels."more complex label with \\ and \""==present"#,
        Want::Matches(&[4]),
    ),
    (
        "LabelQuotedFieldPathPresentWithQuotedEmbed",
        r#"labels."more complex label with \\ and \"".post==present"#,
        Want::Matches(&[5]),
    ),
    (
        "LabelQuotedFieldPathPresentWithQuotedEmbedInvalid",
        r#"labels.?"more complex label with \\ and \"".post==present"#,
        Want::Error(
            r#"filters: parse error: [labels. >|?|< "more complex label with \\ and \"".post==present]: expected field or quoted"#,
        ),
    ),
    (
        "TrailingComma",
        "name==foo,",
        Want::Error("filters: parse error: [name==foo,]: expected field or quoted"),
    ),
    (
        "TrailingFieldSeparator",
        "labels.",
        Want::Error("filters: parse error: [labels.]: expected field or quoted"),
    ),
    (
        "MissingValue",
        "image~=,id?=?fbaq",
        Want::Error("filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted"),
    ),
    (
        "FieldQuotedLiteralNotTerminated",
        "labels.ns/key==value",
        Want::Error(
            "filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated",
        ),
    ),
    (
        "ValueQuotedLiteralNotTerminated",
        "labels.key==/value",
        Want::Error(
            "filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated",
        ),
    ),
];

/// Cases beyond containerd's table, with the results traced through containerd's
/// scanner and parser (`filters/scanner.go`, `filters/parser.go`) by hand.
const SCANNER_CASES: &[(&str, &str, Want)] = &[
    // A NUL after a value: peek sees an illegal token, printed as a rune (U+FFFD).
    (
        "NulAfterValue",
        "name==foo\0",
        Want::Error("filters: parse error: [name==foo >|\0|< ]: unexpected input: \u{FFFD}"),
    ),
    // A NUL where the operator belongs: the scanner's own message.
    (
        "NulBeforeOperator",
        "name\0==x",
        Want::Error("filters: parse error: [name >|\0|< ==x]: unexpected null"),
    ),
    // U+FFFD is a decoding error to Go even when it is encoded whole.
    (
        "ReplacementCharInField",
        "name\u{FFFD}==x",
        Want::Error("filters: parse error: [name >|\u{FFFD}|< ==x]: rune error"),
    ),
    (
        "UnsupportedOperator",
        "name=~x",
        Want::Error(r#"filters: parse error: [name >|=|< ~x]: unsupported operator "=~""#),
    ),
    (
        "SingleEquals",
        "name=x",
        Want::Error(r#"filters: parse error: [name >|=|< x]: unsupported operator "=""#),
    ),
    (
        "LongOperatorRun",
        "name!==x",
        Want::Error(r#"filters: parse error: [name >|!|< ==x]: unsupported operator "!==""#),
    ),
    (
        "ValueNotTerminated",
        "name==\"unterminated",
        Want::Error(
            r#"filters: parse error: [name== >|"|< unterminated]: quoted literal not terminated"#,
        ),
    ),
    (
        "IllegalEscape",
        r#"name=="a\qb""#,
        Want::Error(r#"filters: parse error: [name== >|"|< a\qb"]: illegal escape sequence"#),
    ),
    (
        "IllegalNumericEscape",
        r#"name=="a\x4""#,
        Want::Error(
            r#"filters: parse error: [name== >|"|< a\x4"]: illegal numeric escape sequence"#,
        ),
    ),
    (
        "NewlineInQuote",
        "name==\"a\nb\"",
        Want::Error("filters: parse error: [name== >|\"|< a\nb\"]: quoted literal not terminated"),
    ),
    (
        "TrailingSpace",
        "name ",
        Want::Error(r#"filters: parse error: [name ]: expected an operator ("=="|"!="|"~=")"#),
    ),
    (
        "SpaceAfterValue",
        "  name==foo  ",
        Want::Error("filters: parse error: [  name==foo >| |<  ]: unexpected input:  "),
    ),
    (
        "AltQuoteNeedsRegexp",
        "name==|x|",
        Want::Error("filters: parse error: [name== >|||< x|]: invalid quote encountered"),
    ),
    (
        "DoubleComma",
        "name==foo,,name==bar",
        Want::Error("filters: parse error: [name==foo, >|,|< name==bar]: expected field or quoted"),
    ),
    (
        "OperatorWithoutField",
        "==foo",
        Want::Error("filters: parse error: [ >|=|< =foo]: expected field or quoted"),
    ),
    (
        "DotAfterField",
        "name.==foo",
        Want::Error("filters: parse error: [name. >|=|< =foo]: expected field or quoted"),
    ),
    (
        "UnknownCharacter",
        "name==foo;x",
        Want::Matches(&[]), // `;` is a value character: the value is "foo;x".
    ),
    (
        "SpacesAround",
        "  name == bar,labels.bar",
        Want::Matches(&[3]),
    ),
    // peek does not skip spaces: a space after a value is unexpected input.
    (
        "SpaceBeforeComma",
        "  name == bar ,labels.bar",
        Want::Error("filters: parse error: [  name == bar >| |< ,labels.bar]: unexpected input:  "),
    ),
    (
        "EscapedValue",
        r#"name=="\x62a\u0072""#,
        Want::Matches(&[1, 3]),
    ),
    ("OctalEscape", r#"name=="\142ar""#, Want::Matches(&[1, 3])),
    (
        "PipeQuotedRegexp",
        "name~=|^ba.$|",
        Want::Matches(&[1, 3, 6]),
    ),
    ("RegexpIsASearch", "name~=oo", Want::Matches(&[0, 2, 4, 5])),
    ("AnchoredRegexp", "name~=^foo$", Want::Matches(&[0, 2])),
    (
        "MissingFieldMatchesNotEqual",
        "other!=abc",
        Want::Matches(&[0, 1, 2, 3, 4, 5, 6, 8]),
    ),
    (
        "MissingFieldNeverEqual",
        "labels.nope==",
        Want::Error("filters: parse error: [labels.nope==]: expected value or quoted"),
    ),
    (
        "MissingFieldEqualEmptyQuoted",
        r#"labels.nope=="""#,
        Want::Matches(&[]),
    ),
    (
        "MissingFieldNotEqualEmpty",
        r#"labels.nope!="""#,
        Want::Matches(&[]),
    ),
    (
        "LabelDottedUnquoted",
        "labels.more complex label",
        Want::Error(
            r#"filters: parse error: [labels.more  >|c|< omplex label]: expected an operator ("=="|"!="|"~=")"#,
        ),
    ),
];

fn run(cases: &[(&str, &str, Want)]) {
    let corpus = corpus();
    let mut failures = Vec::new();
    for (name, input, want) in cases {
        let parsed = Filter::parse(input);
        match (want, parsed) {
            (Want::Matches(idx), Ok(f)) => {
                let got: Vec<usize> = (0..corpus.len())
                    .filter(|&i| f.matches(&corpus[i]))
                    .collect();
                if got != *idx {
                    failures.push(format!("{name} {input:?}: matched {got:?}, want {idx:?}"));
                }
            }
            (Want::Matches(_), Err(e)) => failures.push(format!("{name} {input:?}: error {e}")),
            (Want::Error(msg), Ok(_)) => {
                failures.push(format!("{name} {input:?}: parsed, want error {msg:?}"))
            }
            (Want::Error(msg), Err(e)) => {
                if e.kind() != ErrorKind::InvalidArgument {
                    failures.push(format!("{name}: kind {:?}", e.kind()));
                }
                if e.message() != *msg {
                    failures.push(format!(
                        "{name} {input:?}:\n got {:?}\nwant {msg:?}",
                        e.message()
                    ));
                }
                // containerd's ParseAll appends the class: "<message>: invalid argument".
                if e.to_string() != format!("{msg}: invalid argument") {
                    failures.push(format!("{name}: display {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn containerd_filter_test_table() {
    assert_eq!(CONTAINERD_CASES.len(), 26);
    run(CONTAINERD_CASES);
}

#[test]
fn scanner_corner_cases() {
    run(SCANNER_CASES);
}

#[test]
fn parse_errors_are_invalid_argument_through_filter_set() {
    for bad in [
        &["name==foo", "name=="][..],
        &["labels."],
        &["kind==active,"],
    ] {
        let err = FilterSet::parse(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        assert!(
            err.message().starts_with("filters: parse error: ["),
            "{err}"
        );
        assert!(err.to_string().ends_with(": invalid argument"), "{err}");
    }
    // The position marker points at the offending character.
    let err = Filter::parse("name==a b").unwrap_err();
    assert!(err.message().contains(">| |<"), "{err}");
}

#[test]
fn bad_regexp_is_invalid_argument() {
    let err = Filter::parse("name~=[").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.message()
            .starts_with("filters: parse error: [name >|~|< =[]: invalid regular expression"),
        "{err}"
    );
}

#[test]
fn escapes_that_are_not_utf8_are_refused() {
    let err = Filter::parse(r#"name=="\xff""#).unwrap_err();
    assert_eq!(
        err.message(),
        r#"filters: parse error: [name== >|"|< \xff"]: unquoting failed: quote syntax error"#
    );
    // A surrogate half becomes U+FFFD, as Go's utf8.EncodeRune makes it.
    let f = Filter::parse(r#"labels.k=="\ud800""#).unwrap();
    let info = info(Kind::Active, "a", "", &[("k", "\u{FFFD}")]);
    assert!(f.matches(&info));
}

#[test]
fn non_graphic_characters_end_a_value() {
    // U+200B (a format character) is not graphic to Go, so the value is "a".
    let err = Filter::parse("name==a\u{200B}b").unwrap_err();
    assert_eq!(
        err.message(),
        "filters: parse error: [name==a >|\u{200B}|< b]: unexpected input: \u{200B}"
    );
    // Letters, marks, symbols and punctuation beyond ASCII are value characters.
    let f = Filter::parse("name==ünïcode€→¿").unwrap();
    assert!(f.matches(&info(Kind::Active, "ünïcode€→¿", "", &[])));
    // A value's first character is taken whatever it is, as the Go scanner does.
    let f = Filter::parse("name==\u{200B}x").unwrap();
    assert!(f.matches(&info(Kind::Active, "\u{200B}x", "", &[])));
}

fn info(kind: Kind, name: &str, parent: &str, l: &[(&str, &str)]) -> Info {
    let now = SystemTime::now();
    Info {
        kind,
        name: name.to_string(),
        parent: parent.to_string(),
        labels: labels(l.iter().copied()),
        created: now,
        updated: now,
    }
}

fn select(infos: &[Info], filters: &[&str]) -> Vec<String> {
    let f = FilterSet::parse(filters).unwrap_or_else(|e| panic!("{filters:?}: {e}"));
    let mut out: Vec<String> = infos
        .iter()
        .filter(|i| f.matches(*i))
        .map(|i| i.name.clone())
        .collect();
    out.sort();
    out
}

fn names(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The snapshots containerd's checkWalk creates, as `stat` reports them.
fn check_walk_infos() -> Vec<Info> {
    let gc = ("containerd.io/gc.root", "check-walk");
    vec![
        info(Kind::Active, "a-np", "", &[gc]),
        info(Kind::Committed, "p", "", &[gc]),
        info(Kind::Active, "a", "p", &[gc]),
        info(Kind::View, "v", "p", &[gc]),
        info(Kind::Committed, "p-wl", "", &[("l", "1"), gc]),
        info(Kind::Active, "a-wl", "p-wl", &[("l", "2"), gc]),
        info(Kind::View, "v-wl", "p-wl", &[("l", "3"), gc]),
        info(Kind::Active, "a-np-wl", "", &[("l", "2"), gc]),
    ]
}

/// checkWalk's table (containerd snapshots/testsuite/testsuite.go).
pub const CHECK_WALK: &[(&[&str], &[&str])] = &[
    (
        &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
        &["labels.\"containerd.io/gc.root\"==check-walk"],
    ),
    (
        &["a-np", "a", "a-wl", "a-np-wl"],
        &["kind==active,labels.\"containerd.io/gc.root\"==check-walk"],
    ),
    (
        &["v", "v-wl"],
        &["kind==view,labels.\"containerd.io/gc.root\"==check-walk"],
    ),
    (
        &["p", "p-wl"],
        &["kind==committed,labels.\"containerd.io/gc.root\"==check-walk"],
    ),
    (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
    (&["a-wl"], &["name==a-wl,labels.l"]),
    (&["a", "v"], &["parent==p"]),
    (
        &["a", "v", "a-wl", "v-wl"],
        &["parent!=\"\",labels.\"containerd.io/gc.root\"==check-walk"],
    ),
    (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
    (&["a-wl", "a-np-wl"], &["labels.l==2"]),
];

#[test]
fn check_walk_examples_on_info() {
    let infos = check_walk_infos();
    for (i, (want, filters)) in CHECK_WALK.iter().enumerate() {
        assert_eq!(
            select(&infos, filters),
            names(want),
            "case {i}: {filters:?}"
        );
    }
}

#[test]
fn snapshot_adaptor_rules() {
    let infos = vec![
        info(Kind::Committed, "root", "", &[]),
        info(
            Kind::Active,
            "child",
            "root",
            &[("containerd.io/gc.root", "x"), ("a.b", "dotted")],
        ),
        info(Kind::View, "view", "root", &[("empty", "")]),
    ];
    // parent is always present, "" for roots.
    assert_eq!(select(&infos, &["parent==\"\""]), names(&["root"]));
    assert_eq!(select(&infos, &["parent!=\"\""]), names(&["child", "view"]));
    assert_eq!(
        select(&infos, &["parent"]),
        names(&["root", "child", "view"])
    );
    assert_eq!(select(&infos, &["parent==root"]), names(&["child", "view"]));
    // kind is lowercase.
    assert_eq!(select(&infos, &["kind==active"]), names(&["child"]));
    assert_eq!(select(&infos, &["kind==view"]), names(&["view"]));
    assert_eq!(select(&infos, &["kind==committed"]), names(&["root"]));
    assert_eq!(select(&infos, &["kind==Active"]), names(&[]));
    assert_eq!(
        select(&infos, &["kind~=^(active|view)$"]),
        names(&["child", "view"])
    );
    // A missing label matches != and never ==; presence needs the label.
    assert_eq!(
        select(&infos, &["labels.missing!=x"]),
        names(&["root", "child", "view"])
    );
    assert_eq!(select(&infos, &["labels.missing==x"]), names(&[]));
    assert_eq!(select(&infos, &["labels.missing"]), names(&[]));
    // `labels` alone is not a field, with or without labels.
    assert_eq!(select(&infos, &["labels"]), names(&[]));
    // Label keys with dots: quoted, or as the rest of the path joined by dots.
    assert_eq!(
        select(&infos, &["labels.\"a.b\"==dotted"]),
        names(&["child"])
    );
    assert_eq!(select(&infos, &["labels.a.b==dotted"]), names(&["child"]));
    assert_eq!(
        select(&infos, &["labels.\"containerd.io/gc.root\""]),
        names(&["child"])
    );
    // Unquoted, the `/` opens a quoted literal that never ends.
    let err = FilterSet::parse(&["labels.containerd.io/gc.root"]).unwrap_err();
    assert!(
        err.message().ends_with("quoted literal not terminated"),
        "{err}"
    );
    // A label that exists with an empty value is present.
    assert_eq!(select(&infos, &["labels.empty"]), names(&["view"]));
    assert_eq!(select(&infos, &["labels.empty==\"\""]), names(&["view"]));
    // Unknown fields are absent.
    assert_eq!(select(&infos, &["bogus"]), names(&[]));
    assert_eq!(
        select(&infos, &["bogus!=1"]),
        names(&["root", "child", "view"])
    );
    // Several strings OR, commas AND.
    assert_eq!(
        select(&infos, &["name==root", "kind==view"]),
        names(&["root", "view"])
    );
    assert_eq!(select(&infos, &["name==root,kind==view"]), names(&[]));
    assert_eq!(
        select(&infos, &["parent==root,kind==view", "name==root"]),
        names(&["root", "view"])
    );
    // No strings, or an empty string, match everything.
    assert_eq!(select(&infos, &[]), names(&["root", "child", "view"]));
    assert_eq!(select(&infos, &[""]), names(&["root", "child", "view"]));
    assert!(FilterSet::parse::<&str>(&[]).unwrap().is_empty());
}

#[test]
fn labels_type_is_ordered() {
    // The adaptor reads labels from the Info's map; the map type is part of the API.
    let l: Labels = labels([("b", "2"), ("a", "1")]);
    assert_eq!(l.keys().collect::<Vec<_>>(), ["a", "b"]);
}
