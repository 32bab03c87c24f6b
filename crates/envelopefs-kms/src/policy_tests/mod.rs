//! Tests of key policies and their evaluation; the grant cases are in `grants.rs`.

mod grants;

use super::evaluation::glob_match;
use super::*;
use crate::KeyError;
use crate::principal::Principal;
use envelopefs_format::context::EncryptionContext;
use std::collections::BTreeMap;

fn user(uid: u32, name: &str, groups: &[(u32, &str)]) -> Principal {
    Principal {
        uid,
        gid: groups.first().map_or(uid, |g| g.0),
        groups: groups.iter().map(|g| g.0).collect(),
        user_name: Some(name.to_owned()),
        group_names: groups.iter().map(|g| g.1.to_owned()).collect(),
        is_admin: false,
    }
}

fn alice() -> Principal {
    user(1000, "alice", &[(1000, "alice"), (50, "staff")])
}

fn bob() -> Principal {
    user(1001, "bob", &[(1001, "bob")])
}

fn admin() -> Principal {
    Principal {
        is_admin: true,
        ..user(500, "root-ish", &[(500, "adm")])
    }
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    let mut c = EncryptionContext::new();
    for (k, v) in pairs {
        c.insert(k, v);
    }
    c
}

fn no_ctx() -> EncryptionContext {
    EncryptionContext::new()
}

fn policy(json: &str) -> KeyPolicy {
    parse_policy(json).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

fn allowed(p: &KeyPolicy, g: &[Grant], who: &Principal, a: &str, c: &EncryptionContext) -> bool {
    evaluate(p, g, who, a, c).is_allowed()
}

fn malformed(json: &str) -> String {
    match parse_policy(json) {
        Err(KeyError::InvalidArgument(m)) => {
            assert!(m.starts_with("MalformedPolicyDocument: "), "{m}");
            m
        }
        other => panic!("expected MalformedPolicyDocument, got {other:?}"),
    }
}

#[test]
fn empty_policy_allows_nothing() {
    let p = policy(r#"{"Version":"2012-10-17","Statement":[]}"#);
    for a in action::ALL {
        for who in [alice(), admin()] {
            let d = evaluate(&p, &[], &who, a, &no_ctx());
            let Decision::Deny { reason } = d else {
                panic!("{a} allowed")
            };
            assert!(
                reason.starts_with(&format!("no statement or grant allows {a} for uid")),
                "{reason}"
            );
        }
    }
    let Decision::Deny { reason } = evaluate(&p, &[], &alice(), action::DECRYPT, &no_ctx()) else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "no statement or grant allows kms:Decrypt for uid 1000 (alice)"
    );
}

#[test]
fn explicit_deny_beats_allow_and_grants() {
    let p = policy(
        r#"{"Statement":[
                {"Effect":"Allow","Principal":"*","Action":"kms:*"},
                {"Sid":"NoBob","Effect":"Deny","Principal":{"User":"bob"},"Action":"kms:Decrypt"},
                {"Effect":"Deny","Principal":{"User":"1000"},"Action":"kms:DisableKey"}]}"#,
    );
    let g = Grant::new(PrincipalSpec::user("bob"), &["Decrypt"], None, None, None).unwrap();
    let d = evaluate(
        &p,
        std::slice::from_ref(&g),
        &bob(),
        action::DECRYPT,
        &no_ctx(),
    );
    assert_eq!(
        d,
        Decision::Deny {
            reason: "kms:Decrypt for uid 1001 (bob) is explicitly denied by key policy \
                         statement \"NoBob\""
                .into()
        }
    );
    assert!(allowed(&p, &[], &bob(), action::ENCRYPT, &no_ctx()));
    assert!(allowed(&p, &[], &alice(), action::DECRYPT, &no_ctx()));
    let Decision::Deny { reason } = evaluate(&p, &[], &alice(), action::DISABLE_KEY, &no_ctx())
    else {
        panic!("deny by uid ignored")
    };
    assert!(reason.contains("Statement[2]"), "{reason}");
}

#[test]
fn wildcard_actions() {
    let p = policy(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*",
                "Action":["kms:ReEncryptF*","KMS:describe*","kms:ReEncryptT?"]}]}"#,
    );
    let a = alice();
    assert!(allowed(&p, &[], &a, action::RE_ENCRYPT_FROM, &no_ctx()));
    assert!(allowed(&p, &[], &a, action::RE_ENCRYPT_TO, &no_ctx()));
    assert!(allowed(&p, &[], &a, action::DESCRIBE_KEY, &no_ctx()));
    assert!(!allowed(&p, &[], &a, action::GENERATE_DATA_KEY, &no_ctx()));
    assert!(!allowed(&p, &[], &a, action::DECRYPT, &no_ctx()));
    let re =
        policy(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:ReEncrypt*"}]}"#);
    assert!(allowed(&re, &[], &a, action::RE_ENCRYPT_FROM, &no_ctx()));
    assert!(allowed(&re, &[], &a, action::RE_ENCRYPT_TO, &no_ctx()));
    assert!(!allowed(&re, &[], &a, action::ENCRYPT, &no_ctx()));
    let star = policy(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*"}]}"#);
    assert!(
        action::ALL
            .iter()
            .all(|x| allowed(&star, &[], &a, x, &no_ctx()))
    );
    let kms_star = policy(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*"}]}"#);
    assert!(
        action::ALL
            .iter()
            .all(|x| allowed(&kms_star, &[], &a, x, &no_ctx()))
    );
    // A pattern that matches no action is a typo, not a statement about nothing.
    malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:GenerateDataKey?"}]}"#,
    );
}

#[test]
fn glob_matching() {
    assert!(glob_match("a*b?c", "aXXbYc", false));
    assert!(glob_match("*", "", false));
    assert!(glob_match("**a", "a", false));
    assert!(!glob_match("a*b", "acbx", false));
    assert!(glob_match("a*b*", "axbyb", false));
    assert!(!glob_match("A", "a", false));
    assert!(glob_match("A", "a", true));
    assert!(glob_match("é?", "éü", false));
    assert!(!glob_match("", "x", false));
}

/// Every pattern of up to 3 characters over `* ? a A é` against every text of up to 3 over
/// `a A é b`, both cases: the fast paths (no wildcard, ASCII bytes) agree with a plain
/// recursive definition.
#[test]
fn glob_matching_agrees_with_its_definition() {
    fn reference(p: &[char], t: &[char], icase: bool) -> bool {
        match (p.first(), t.first()) {
            (None, _) => t.is_empty(),
            (Some('*'), _) => {
                reference(&p[1..], t, icase) || (!t.is_empty() && reference(p, &t[1..], icase))
            }
            (Some(_), None) => false,
            (Some(&c), Some(&d)) => {
                (c == '?' || c == d || (icase && c.eq_ignore_ascii_case(&d)))
                    && reference(&p[1..], &t[1..], icase)
            }
        }
    }
    fn all(alphabet: &[char], max: usize) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&c| format!("{s}{c}")))
                .collect();
            out.extend(last.iter().cloned());
        }
        out
    }
    let (patterns, texts) = (
        all(&['*', '?', 'a', 'A', 'é'], 3),
        all(&['a', 'A', 'é', 'b'], 3),
    );
    for p in &patterns {
        let pc: Vec<char> = p.chars().collect();
        for t in &texts {
            let tc: Vec<char> = t.chars().collect();
            for icase in [false, true] {
                assert_eq!(
                    glob_match(p, t, icase),
                    reference(&pc, &tc, icase),
                    "{p:?} against {t:?}, ignore case {icase}"
                );
            }
        }
    }
}

#[test]
fn users_by_name_and_uid_groups_by_supplementary_membership() {
    let by_name = policy(
        r#"{"Statement":[{"Effect":"Allow","Principal":{"User":"alice"},"Action":"kms:Decrypt"}]}"#,
    );
    let by_uid = policy(
        r#"{"Statement":[{"Effect":"Allow","Principal":{"User":["9","1000"]},"Action":"kms:Decrypt"}]}"#,
    );
    let by_group = policy(
        r#"{"Statement":[{"Effect":"Allow","Principal":{"Group":"staff"},"Action":"kms:Decrypt"}]}"#,
    );
    let by_gid = policy(
        r#"{"Statement":[{"Effect":"Allow","Principal":{"Group":["50"]},"Action":"kms:Decrypt"}]}"#,
    );
    for p in [&by_name, &by_uid, &by_group, &by_gid] {
        assert!(allowed(p, &[], &alice(), action::DECRYPT, &no_ctx()));
        assert!(!allowed(p, &[], &bob(), action::DECRYPT, &no_ctx()));
        assert!(!allowed(p, &[], &alice(), action::ENCRYPT, &no_ctx()));
    }
    // A principal whose name is unknown still matches by uid, never by name.
    let nameless = Principal {
        user_name: None,
        group_names: vec![],
        ..alice()
    };
    assert!(allowed(&by_uid, &[], &nameless, action::DECRYPT, &no_ctx()));
    assert!(allowed(&by_gid, &[], &nameless, action::DECRYPT, &no_ctx()));
    assert!(!allowed(
        &by_name,
        &[],
        &nameless,
        action::DECRYPT,
        &no_ctx()
    ));
    assert!(!allowed(
        &by_group,
        &[],
        &nameless,
        action::DECRYPT,
        &no_ctx()
    ));
}

#[test]
fn admin_principal() {
    let p =
        policy(r#"{"Statement":[{"Effect":"Allow","Principal":{"Admin":true},"Action":"kms:*"}]}"#);
    assert!(
        action::ALL
            .iter()
            .all(|a| allowed(&p, &[], &admin(), a, &no_ctx()))
    );
    assert!(!allowed(&p, &[], &alice(), action::DECRYPT, &no_ctx()));
}

#[test]
fn default_policy_lets_users_use_and_only_admin_manage() {
    let p = default_policy();
    assert_eq!(parse_policy(&p.to_json_pretty()).unwrap(), p, "round trip");
    let mut rnd = [0u8; 4];
    getrandom::fill(&mut rnd).unwrap();
    let uid = 1000 + u32::from_le_bytes(rnd) % 1_000_000;
    let anyone = Principal {
        uid,
        gid: uid,
        groups: vec![uid],
        user_name: None,
        group_names: vec![],
        is_admin: false,
    };
    let c = EncryptionContext::for_file("vol", &[7; 16]);
    for a in [
        action::DECRYPT,
        action::GENERATE_DATA_KEY,
        action::RE_ENCRYPT_FROM,
        action::RE_ENCRYPT_TO,
        action::DESCRIBE_KEY,
        action::ENCRYPT,
    ] {
        assert!(allowed(&p, &[], &anyone, a, &c), "{a}");
    }
    for a in [
        action::DISABLE_KEY,
        action::PUT_KEY_POLICY,
        action::CREATE_GRANT,
        action::SCHEDULE_KEY_DELETION,
    ] {
        assert!(!allowed(&p, &[], &anyone, a, &no_ctx()), "{a}");
    }
    for a in action::ALL {
        assert_eq!(
            evaluate(&p, &[], &admin(), a, &no_ctx()),
            Decision::Allow {
                by: "key policy statement \"Enable administrator\"".into()
            }
        );
    }
    assert!(!needs_groups(&p, &[]), "the default policy names no group");
    let g = Grant::new(
        PrincipalSpec::group("staff"),
        &["Decrypt"],
        None,
        None,
        None,
    )
    .unwrap();
    assert!(needs_groups(&p, &[g]));
    let mut with_group = p.clone();
    with_group.statement[1].principal = PrincipalSpec::group("staff");
    assert!(needs_groups(&with_group, &[]));
    assert!(check_lockout(&p, &admin()).is_ok());
    assert!(check_lockout(&p, &anyone).is_err());
}

#[test]
fn conditions_on_the_encryption_context() {
    let p = policy(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
               "Condition":{
                 "StringEquals":{"kms:EncryptionContext:envelopefs:volume-id":["vol-a","vol-b"]},
                 "StringLike":{"KMS:ENCRYPTIONCONTEXT:envelopefs:file-id":"ab*"}}}]}"#,
    );
    let a = alice();
    let c = |v: &str, f: &str| ctx(&[("envelopefs:volume-id", v), ("envelopefs:file-id", f)]);
    assert!(allowed(&p, &[], &a, action::DECRYPT, &c("vol-a", "ab01")));
    assert!(allowed(&p, &[], &a, action::DECRYPT, &c("vol-b", "ab")));
    assert!(!allowed(&p, &[], &a, action::DECRYPT, &c("vol-c", "ab01")));
    assert!(!allowed(&p, &[], &a, action::DECRYPT, &c("vol-a", "cd01")));
    assert!(
        !allowed(&p, &[], &a, action::DECRYPT, &c("VOL-A", "ab01")),
        "values are case-sensitive"
    );
    assert!(
        !allowed(
            &p,
            &[],
            &a,
            action::DECRYPT,
            &ctx(&[("envelopefs:file-id", "ab")])
        ),
        "missing key"
    );

    let keys = policy(
        r#"{"Statement":[
                {"Effect":"Allow","Principal":"*","Action":"kms:*"},
                {"Sid":"PurposeOnlyForAdmin","Effect":"Deny","Principal":"*","Action":"kms:Decrypt",
                 "Condition":{"StringEquals":{"kms:EncryptionContextKeys":"envelopefs:purpose"}}}]}"#,
    );
    assert!(allowed(
        &keys,
        &[],
        &a,
        action::DECRYPT,
        &EncryptionContext::for_file("v", &[1; 16])
    ));
    let d = evaluate(
        &keys,
        &[],
        &a,
        action::DECRYPT,
        &EncryptionContext::for_volume_key("v"),
    );
    assert!(matches!(d, Decision::Deny { reason } if reason.contains("PurposeOnlyForAdmin")));
    let like = policy(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
               "Condition":{"StringLike":{"kms:EncryptionContextKeys":"envelopefs:*"}}}]}"#,
    );
    assert!(allowed(
        &like,
        &[],
        &a,
        action::DECRYPT,
        &ctx(&[("envelopefs:x", "1")])
    ));
    assert!(!allowed(
        &like,
        &[],
        &a,
        action::DECRYPT,
        &ctx(&[("other", "1")])
    ));
    assert!(!allowed(&like, &[], &a, action::DECRYPT, &no_ctx()));
}

#[test]
fn malformed_policies_are_rejected_with_a_reason() {
    let m = malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
               "Condition":{"StringNotEquals":{"kms:EncryptionContext:a":"b"}}}]}"#,
    );
    assert!(
        m.contains("StringNotEquals") && m.contains("StringEquals and StringLike"),
        "{m}"
    );
    let m = malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt",
               "Condition":{"StringEquals":{"aws:SourceIp":"1.2.3.4"}}}]}"#,
    );
    assert!(m.contains("aws:SourceIp"), "{m}");
    let m =
        malformed(r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:Decrypt"}]}"#);
    assert!(m.contains("Maybe"), "{m}");
    let m =
        malformed(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Decrpyt"}]}"#);
    assert!(m.contains("kms:Decrpyt"), "{m}");
    let m = malformed(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:*"}]}"#);
    assert!(m.contains("s3:*"), "{m}");
    let m = malformed(r#"{"Statement":[{"Effect":"Allow","NotPrincipal":"*","Action":"kms:*"}]}"#);
    assert!(m.contains("NotPrincipal"), "{m}");
    let m =
        malformed(r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*"}]}"#);
    assert!(m.contains("AWS"), "{m}");
    malformed(r#"{"Statement":[{"Effect":"Allow","Principal":{},"Action":"kms:*"}]}"#);
    malformed(r#"{"Statement":[{"Effect":"Allow","Principal":"alice","Action":"kms:*"}]}"#);
    malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":{"User":"99999999999"},"Action":"kms:*"}]}"#,
    );
    malformed(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":[]}]}"#);
    malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"arn:x"}]}"#,
    );
    malformed(r#"{"Version":"2099-01-01","Statement":[]}"#);
    malformed(
        r#"{"Statement":[{"Sid":"a","Effect":"Allow","Principal":"*","Action":"kms:*"},{"Sid":"a","Effect":"Deny","Principal":"*","Action":"kms:*"}]}"#,
    );
    malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"StringEquals":{"kms:EncryptionContext:a":"1","kms:EncryptionContext:a":"2"}}}]}"#,
    );
    malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"StringEquals":{}}}]}"#,
    );
    malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Condition":{"StringEquals":{"kms:EncryptionContext:":"x"}}}]}"#,
    );
    malformed(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Effect":"Deny"}]}"#,
    );
    malformed("not json");
    malformed("");

    let pad = " ".repeat(MAX_POLICY_BYTES);
    let m = malformed(&format!(r#"{{"Statement":[]}}{pad}"#));
    assert!(m.contains("32768"), "{m}");
    // Exactly at the limit is fine.
    let body = r#"{"Statement":[]}"#;
    parse_policy(&format!(
        "{body}{}",
        " ".repeat(MAX_POLICY_BYTES - body.len())
    ))
    .unwrap();
}

#[test]
fn policies_round_trip_through_json() {
    let p = policy(
        r#"{"Version":"2008-10-17","Statement":[
                {"Sid":"s","Effect":"Deny","Principal":{"User":["alice","7"],"Group":"g","Admin":true},
                 "Action":["kms:Decrypt","kms:ReEncrypt*"],"Resource":"*",
                 "Condition":{"StringLike":{"kms:EncryptionContext:x":["a*","b"]},
                              "StringEquals":{"kms:EncryptionContextKeys":"k"}}}]}"#,
    );
    let again = parse_policy(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(again, p);
    assert_eq!(parse_policy(&p.to_json_pretty()).unwrap(), p);
}

#[test]
fn principal_spec_cli_forms() {
    assert_eq!(
        PrincipalSpec::from_cli("user:alice").unwrap(),
        PrincipalSpec::user("alice")
    );
    assert_eq!(
        PrincipalSpec::from_cli("group:100").unwrap(),
        PrincipalSpec::group("100")
    );
    assert_eq!(
        PrincipalSpec::from_cli("admin").unwrap(),
        PrincipalSpec::admin()
    );
    assert_eq!(PrincipalSpec::from_cli("*").unwrap(), PrincipalSpec::Any);
    assert!(PrincipalSpec::from_cli("alice").is_err());
    assert!(PrincipalSpec::from_cli("user:").is_err());
    assert_eq!(PrincipalSpec::user("alice").to_string(), "user:alice");
}

/// Issue 11 item 8e: names the system does not know are reported; ids and known names are not.
#[test]
fn unknown_principal_names_are_reported() {
    let spec = PrincipalSpec::from_cli("user:no-such-user-envelopefs").unwrap();
    assert_eq!(spec.unknown_names(), ["user no-such-user-envelopefs"]);
    let spec = PrincipalSpec::from_cli("group:no-such-group-envelopefs").unwrap();
    assert_eq!(spec.unknown_names(), ["group no-such-group-envelopefs"]);
    for known in [
        "user:root",
        "user:4242",
        "group:root",
        "group:4242",
        "admin",
        "*",
    ] {
        let spec = PrincipalSpec::from_cli(known).unwrap();
        assert!(spec.unknown_names().is_empty(), "{known}");
    }
    let policy = parse_policy(
        r#"{"Statement": [
            {"Effect": "Allow", "Principal": {"Admin": true}, "Action": "kms:*"},
            {"Effect": "Allow", "Principal": {"User": ["root", "nobody-here-envelopefs"], "Group": "4242"}, "Action": "kms:Decrypt"},
            {"Effect": "Deny", "Principal": {"User": "nobody-here-envelopefs"}, "Action": "kms:Decrypt"}]}"#,
    )
    .unwrap();
    assert_eq!(policy.unknown_names(), ["user nobody-here-envelopefs"]);
}
