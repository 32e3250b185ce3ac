//! Relabelling behaves as Prometheus's `relabel_config` documents.

use ferroscope_targets::relabel::{self, Action, RelabelConfig};
use ferroscope_targets::{Labels, RelabelRule};

fn rule(action: Action, f: impl FnOnce(&mut RelabelConfig)) -> RelabelConfig {
    let mut c = RelabelConfig {
        action,
        ..Default::default()
    };
    f(&mut c);
    c
}

fn src(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().copied().collect()
}

/// Applies `rules` to `input` and compares with `expected` (`None`: dropped).
#[track_caller]
fn check(rules: Vec<RelabelConfig>, input: &[(&str, &str)], expected: Option<&[(&str, &str)]>) {
    let compiled = relabel::compile(rules.clone()).unwrap_or_else(|e| panic!("{rules:?}: {e}"));
    let got = relabel::relabel(&compiled, labels(input));
    assert_eq!(got, expected.map(labels), "rules {rules:?} on {input:?}");
}

#[test]
fn replace() {
    let base = [("a", "foo"), ("b", "bar")];
    // Defaults: regex (.*), replacement $1: copy.
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["a"]);
            c.target_label = "c".into();
        })],
        &base,
        Some(&[("a", "foo"), ("b", "bar"), ("c", "foo")]),
    );
    // Capture groups, ${1} and repeated use.
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["a"]);
            c.regex = "f(.*)".into();
            c.target_label = "d".into();
            c.replacement = "ch${1}-ch${1}".into();
        })],
        &base,
        Some(&[("a", "foo"), ("b", "bar"), ("d", "choo-choo")]),
    );
    // Source values are joined with the separator before matching.
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["a", "b"]);
            c.separator = "@".into();
            c.regex = "(.*)@(.*)".into();
            c.target_label = "service_name".into();
            c.replacement = "ebpf/${1}/${2}".into();
        })],
        &base,
        Some(&[("a", "foo"), ("b", "bar"), ("service_name", "ebpf/foo/bar")]),
    );
    // No match: no change.
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["a"]);
            c.regex = "x(.*)".into();
            c.target_label = "a".into();
            c.replacement = "changed".into();
        })],
        &base,
        Some(&base),
    );
    // The regex is anchored: "oo" does not match "foo".
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["a"]);
            c.regex = "oo".into();
            c.target_label = "x".into();
            c.replacement = "y".into();
        })],
        &base,
        Some(&base),
    );
    // An empty result removes the target label.
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["missing"]);
            c.target_label = "b".into();
        })],
        &base,
        Some(&[("a", "foo")]),
    );
    // Missing source labels are empty strings in the joined value.
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["missing", "a"]);
            c.target_label = "j".into();
            c.replacement = "[$1]".into();
        })],
        &base,
        Some(&[("a", "foo"), ("b", "bar"), ("j", "[;foo]")]),
    );
    // The target label is a template too.
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["b"]);
            c.target_label = "prefix_$1".into();
            c.replacement = "yes".into();
        })],
        &base,
        Some(&[("a", "foo"), ("b", "bar"), ("prefix_bar", "yes")]),
    );
    // A target that expands to an invalid label name: no change.
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["a"]);
            c.regex = "(.*)".into();
            c.target_label = "${1}-x".into();
        })],
        &base,
        Some(&base),
    );
    // Named groups, `$$`, and `$1x` meaning the (absent) group "1x".
    check(
        vec![rule(Action::Replace, |c| {
            c.source_labels = src(&["a"]);
            c.regex = "(?P<first>.)(.*)".into();
            c.target_label = "n".into();
            c.replacement = "$first|$$|$1x|${2}x".into();
        })],
        &base,
        Some(&[("a", "foo"), ("b", "bar"), ("n", "f|$||oox")]),
    );
    // Replacement without references: constant.
    check(
        vec![rule(Action::Replace, |c| {
            c.target_label = "env".into();
            c.replacement = "prod".into();
        })],
        &[("a", "1")],
        Some(&[("a", "1"), ("env", "prod")]),
    );
}

#[test]
fn keep_and_drop() {
    let base = [("a", "foo"), ("b", "bar")];
    let keep = |re: &str, l: &[&str]| {
        rule(Action::Keep, |c| {
            c.source_labels = src(l);
            c.regex = re.into();
        })
    };
    let drop = |re: &str, l: &[&str]| {
        rule(Action::Drop, |c| {
            c.source_labels = src(l);
            c.regex = re.into();
        })
    };
    check(vec![keep("f.*", &["a"])], &base, Some(&base));
    check(vec![keep("b.*", &["a"])], &base, None);
    check(vec![keep("o", &["a"])], &base, None); // anchored
    check(vec![keep("foo;bar", &["a", "b"])], &base, Some(&base));
    // A missing label is "": the default regex (.*) keeps it; ".+" does not.
    check(vec![keep(".+", &["missing"])], &base, None);
    check(vec![keep("(.*)", &["missing"])], &base, Some(&base));
    check(vec![drop("f.*", &["a"])], &base, None);
    check(vec![drop("b.*", &["a"])], &base, Some(&base));
    // Alloy's Kubernetes example: drop finished pods.
    check(
        vec![drop("Succeeded|Failed", &["__meta_kubernetes_pod_phase"])],
        &[("__meta_kubernetes_pod_phase", "Failed")],
        None,
    );
    check(
        vec![drop("Succeeded|Failed", &["__meta_kubernetes_pod_phase"])],
        &[("__meta_kubernetes_pod_phase", "Running")],
        Some(&[("__meta_kubernetes_pod_phase", "Running")]),
    );
    // A later rule does not run after a drop.
    check(
        vec![
            drop(".*", &["a"]),
            rule(Action::Replace, |c| {
                c.target_label = "x".into();
                c.replacement = "y".into();
            }),
        ],
        &base,
        None,
    );
}

#[test]
fn keepequal_and_dropequal() {
    let base = [("a", "1"), ("b", "1"), ("c", "2")];
    let eq = |action, s: &str, t: &str| {
        rule(action, |c| {
            c.source_labels = src(&[s]);
            c.target_label = t.into();
        })
    };
    check(vec![eq(Action::KeepEqual, "a", "b")], &base, Some(&base));
    check(vec![eq(Action::KeepEqual, "a", "c")], &base, None);
    check(vec![eq(Action::DropEqual, "a", "b")], &base, None);
    check(vec![eq(Action::DropEqual, "a", "c")], &base, Some(&base));
}

#[test]
fn labelmap() {
    let base = [
        ("__meta_kubernetes_pod_label_app", "web"),
        ("__meta_kubernetes_pod_label_tier", "front"),
        ("other", "x"),
    ];
    check(
        vec![rule(Action::LabelMap, |c| {
            c.regex = "__meta_kubernetes_pod_label_(.+)".into()
        })],
        &base,
        Some(&[
            ("__meta_kubernetes_pod_label_app", "web"),
            ("__meta_kubernetes_pod_label_tier", "front"),
            ("app", "web"),
            ("other", "x"),
            ("tier", "front"),
        ]),
    );
    check(
        vec![rule(Action::LabelMap, |c| {
            c.regex = "__meta_kubernetes_pod_label_(.+)".into();
            c.replacement = "k8s_${1}".into();
        })],
        &[("__meta_kubernetes_pod_label_app", "web")],
        Some(&[
            ("__meta_kubernetes_pod_label_app", "web"),
            ("k8s_app", "web"),
        ]),
    );
    // Anchored: a partial match copies nothing.
    check(
        vec![rule(Action::LabelMap, |c| {
            c.regex = "pod_label_(.+)".into()
        })],
        &[("__meta_kubernetes_pod_label_app", "web")],
        Some(&[("__meta_kubernetes_pod_label_app", "web")]),
    );
}

#[test]
fn labeldrop_and_labelkeep() {
    let base = [("__meta_a", "1"), ("__meta_b", "2"), ("job", "x")];
    check(
        vec![rule(Action::LabelDrop, |c| c.regex = "__meta_.*".into())],
        &base,
        Some(&[("job", "x")]),
    );
    check(
        vec![rule(Action::LabelKeep, |c| c.regex = "__meta_.*".into())],
        &base,
        Some(&[("__meta_a", "1"), ("__meta_b", "2")]),
    );
    // Dropping every label drops the target.
    check(
        vec![rule(Action::LabelDrop, |c| c.regex = ".*".into())],
        &base,
        None,
    );
}

#[test]
fn hashmod() {
    // Prometheus's own test vector: md5("baz") mod 1000 = 976.
    check(
        vec![rule(Action::HashMod, |c| {
            c.source_labels = src(&["c"]);
            c.target_label = "d".into();
            c.modulus = 1000;
        })],
        &[("a", "foo"), ("c", "baz")],
        Some(&[("a", "foo"), ("c", "baz"), ("d", "976")]),
    );
    // Joined values (md5("foo;bar") mod 1000 = 750), then sharding with keep.
    check(
        vec![
            rule(Action::HashMod, |c| {
                c.source_labels = src(&["a", "b"]);
                c.target_label = "__tmp_hash".into();
                c.modulus = 1000;
            }),
            rule(Action::Keep, |c| {
                c.source_labels = src(&["__tmp_hash"]);
                c.regex = "750".into();
            }),
        ],
        &[("a", "foo"), ("b", "bar")],
        Some(&[("__tmp_hash", "750"), ("a", "foo"), ("b", "bar")]),
    );
}

#[test]
fn lowercase_and_uppercase() {
    check(
        vec![
            rule(Action::Lowercase, |c| {
                c.source_labels = src(&["a"]);
                c.target_label = "lo".into();
            }),
            rule(Action::Uppercase, |c| {
                c.source_labels = src(&["a"]);
                c.target_label = "up".into();
            }),
        ],
        &[("a", "MiXed")],
        Some(&[("a", "MiXed"), ("lo", "mixed"), ("up", "MIXED")]),
    );
}

#[test]
fn validation_errors_name_the_rule_and_the_fix() {
    let cases: Vec<(RelabelConfig, &str)> = vec![
        (rule(Action::Replace, |_| {}), "needs `target_label`"),
        (
            rule(Action::HashMod, |c| c.target_label = "x".into()),
            "non-zero `modulus`",
        ),
        (
            rule(Action::HashMod, |c| c.modulus = 3),
            "needs `target_label`",
        ),
        (
            rule(Action::Replace, |c| c.target_label = "1abc".into()),
            "not a valid label name",
        ),
        (
            rule(Action::Lowercase, |c| c.target_label = "a-b".into()),
            "not a valid label name",
        ),
        (
            rule(Action::LabelMap, |c| c.replacement = "a-b".into()),
            "`replacement`",
        ),
        (
            rule(Action::LabelDrop, |c| c.source_labels = src(&["a"])),
            "uses only `regex`",
        ),
        (
            rule(Action::LabelKeep, |c| c.replacement = "x".into()),
            "uses only `regex`",
        ),
        (
            rule(Action::KeepEqual, |c| {
                c.target_label = "a".into();
                c.regex = "x".into();
            }),
            "uses only `source_labels` and `target_label`",
        ),
        (
            rule(Action::Keep, |c| c.regex = "(unclosed".into()),
            "does not compile (unclosed group)",
        ),
        // The regex crate's message is several lines; what is wrong must not be cut off.
        (
            rule(Action::Keep, |c| c.regex = "((".into()),
            "regex \"((\" does not compile (unclosed group)",
        ),
        (
            rule(Action::Keep, |c| c.regex = "a{2,1}".into()),
            "does not compile (invalid repetition count range",
        ),
    ];
    for (config, want) in cases {
        let action = config.action;
        let ok = rule(Action::Keep, |_| {});
        let err = relabel::compile([ok, config.clone()])
            .err()
            .unwrap_or_else(|| panic!("{config:?} should be rejected"));
        let msg = err.to_string();
        assert!(msg.contains(want), "{config:?}: {msg}");
        assert!(msg.contains("rule #2"), "{msg}");
        assert!(msg.contains(&format!("\"{action}\"")), "{msg}");
        // The single-rule constructor has no position.
        let single = RelabelRule::new(config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            single.starts_with("invalid relabel rule (action"),
            "{single}"
        );
    }
}

#[test]
fn rules_deserialize_with_prometheus_defaults() {
    let rules: Vec<RelabelRule> = serde_json::from_str(
        r#"[{"source_labels": ["a"], "target_label": "b"}, {"action": "labelmap", "regex": "x_(.*)"}]"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules[0].config().action, Action::Replace);
    assert_eq!(rules[0].config().separator, ";");
    assert_eq!(rules[0].config().regex, "(.*)");
    assert_eq!(rules[0].config().replacement, "$1");
    assert_eq!(rules[1].config().action, Action::LabelMap);
    let bad =
        serde_json::from_str::<Vec<RelabelRule>>(r#"[{"action": "hashmod", "target_label": "x"}]"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    assert!(bad.contains("modulus"), "{bad}");
    let unknown = serde_json::from_str::<Vec<RelabelRule>>(r#"[{"action": "rename"}]"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(unknown.contains("expected one of"), "{unknown}");
}
