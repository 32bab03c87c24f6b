//! Tests of grants: what they allow, their constraints, validation and retirement, and
//! creating a grant through a grant.

use super::*;

#[test]
fn grant_allows_until_removed() {
    let p =
        policy(r#"{"Statement":[{"Effect":"Allow","Principal":{"Admin":true},"Action":"kms:*"}]}"#);
    let g = Grant::new(
        PrincipalSpec::user("bob"),
        &["kms:decrypt", "GenerateDataKey"],
        None,
        None,
        Some("bob-read".into()),
    )
    .unwrap();
    assert_eq!(g.operations, ["Decrypt", "GenerateDataKey"]);
    let c = ctx(&[("envelopefs:file-id", "ab")]);
    let d = evaluate(&p, std::slice::from_ref(&g), &bob(), action::DECRYPT, &c);
    assert_eq!(d, Decision::Allow { by: g.label() });
    assert!(g.label().contains("bob-read"));
    assert!(!allowed(
        &p,
        std::slice::from_ref(&g),
        &bob(),
        action::RE_ENCRYPT_FROM,
        &c
    ));
    assert!(!allowed(
        &p,
        std::slice::from_ref(&g),
        &alice(),
        action::DECRYPT,
        &c
    ));
    assert!(!allowed(&p, &[], &bob(), action::DECRYPT, &c), "revoked");
    // A group grant reaches members through supplementary groups.
    let gg = Grant::new(
        PrincipalSpec::group("staff"),
        &["Decrypt"],
        None,
        None,
        None,
    )
    .unwrap();
    assert!(allowed(
        &p,
        std::slice::from_ref(&gg),
        &alice(),
        action::DECRYPT,
        &c
    ));
    assert!(!allowed(
        &p,
        std::slice::from_ref(&gg),
        &bob(),
        action::DECRYPT,
        &c
    ));
}

#[test]
fn grant_constraints_subset_and_equals() {
    let p = policy(r#"{"Statement":[]}"#);
    let pairs = |ps: &[(&str, &str)]| -> BTreeMap<String, String> {
        ps.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let subset = Grant::new(
        PrincipalSpec::user("bob"),
        &["Decrypt", "DescribeKey"],
        None,
        Some(GrantConstraints {
            encryption_context_subset: Some(pairs(&[("Vol", "v1")])),
            ..Default::default()
        }),
        None,
    )
    .unwrap();
    let g = std::slice::from_ref(&subset);
    assert!(
        allowed(
            &p,
            g,
            &bob(),
            action::DECRYPT,
            &ctx(&[("vol", "v1"), ("file", "f")])
        ),
        "key case-insensitive"
    );
    assert!(
        !allowed(&p, g, &bob(), action::DECRYPT, &ctx(&[("vol", "V1")])),
        "value case-sensitive"
    );
    assert!(!allowed(
        &p,
        g,
        &bob(),
        action::DECRYPT,
        &ctx(&[("file", "f")])
    ));
    assert!(
        allowed(&p, g, &bob(), action::DESCRIBE_KEY, &no_ctx()),
        "DescribeKey is unconstrained"
    );

    let equals = Grant::new(
        PrincipalSpec::user("1001"),
        &["Decrypt"],
        None,
        Some(GrantConstraints {
            encryption_context_equals: Some(pairs(&[("vol", "v1"), ("file", "f")])),
            ..Default::default()
        }),
        None,
    )
    .unwrap();
    let g = std::slice::from_ref(&equals);
    assert!(allowed(
        &p,
        g,
        &bob(),
        action::DECRYPT,
        &ctx(&[("file", "f"), ("vol", "v1")])
    ));
    assert!(!allowed(
        &p,
        g,
        &bob(),
        action::DECRYPT,
        &ctx(&[("vol", "v1")])
    ));
    assert!(!allowed(
        &p,
        g,
        &bob(),
        action::DECRYPT,
        &ctx(&[("vol", "v1"), ("file", "f"), ("x", "y")])
    ));

    // Both kinds at once, too many pairs, or over-long values are refused.
    let both = GrantConstraints {
        encryption_context_subset: Some(pairs(&[("a", "b")])),
        encryption_context_equals: Some(pairs(&[("a", "b")])),
    };
    assert!(
        Grant::new(
            PrincipalSpec::user("bob"),
            &["Decrypt"],
            None,
            Some(both),
            None
        )
        .is_err()
    );
    let many: BTreeMap<_, _> = (0..9).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let c = GrantConstraints {
        encryption_context_subset: Some(many),
        ..Default::default()
    };
    assert!(
        Grant::new(
            PrincipalSpec::user("bob"),
            &["Decrypt"],
            None,
            Some(c),
            None
        )
        .is_err()
    );
    let long = GrantConstraints {
        encryption_context_subset: Some(pairs(&[("k", &"x".repeat(385))])),
        ..Default::default()
    };
    assert!(
        Grant::new(
            PrincipalSpec::user("bob"),
            &["Decrypt"],
            None,
            Some(long),
            None
        )
        .is_err()
    );
}

#[test]
fn grant_validation_and_retirement() {
    assert!(Grant::new(PrincipalSpec::Any, &["Decrypt"], None, None, None).is_err());
    let two = PrincipalSpec::Local(LocalPrincipals {
        users: ["a", "b"].into(),
        ..Default::default()
    });
    assert!(Grant::new(two, &["Decrypt"], None, None, None).is_err());
    assert!(
        Grant::new(
            PrincipalSpec::user("bob"),
            &["DisableKey"],
            None,
            None,
            None
        )
        .is_err()
    );
    assert!(Grant::new(PrincipalSpec::user("bob"), &[], None, None, None).is_err());
    assert!(
        Grant::new(
            PrincipalSpec::user("bob"),
            &["Decrypt"],
            None,
            None,
            Some("bad name".into())
        )
        .is_err()
    );

    let g = Grant::new(
        PrincipalSpec::user("bob"),
        &["Decrypt"],
        Some(PrincipalSpec::group("staff")),
        None,
        None,
    )
    .unwrap();
    assert_eq!(g.grant_id.len(), 64);
    assert_ne!(g.grant_id, new_grant_id());
    assert!(g.may_retire(&alice()), "retiring principal via group");
    assert!(!g.may_retire(&bob()), "grantee without RetireGrant");
    let g2 = Grant::new(
        PrincipalSpec::user("bob"),
        &["Decrypt", "RetireGrant"],
        None,
        None,
        None,
    )
    .unwrap();
    assert!(g2.may_retire(&bob()));

    // Storage round trip, and unknown members refused (a future constraint is never ignored).
    let json = serde_json::to_string(&g).unwrap();
    assert!(
        json.contains("\"grant_id\"")
            && json.contains("\"retiring_principal\":{\"Group\":\"staff\"}"),
        "{json}"
    );
    let back: Grant = serde_json::from_str(&json).unwrap();
    assert_eq!(back, g);
    back.validate().unwrap();
    let extra = json.replacen('{', "{\"source_arn\":\"x\",", 1);
    assert!(serde_json::from_str::<Grant>(&extra).is_err());
}

#[test]
fn create_grant_through_a_grant_must_not_widen() {
    let p = policy(r#"{"Statement":[]}"#);
    let sub = |k: &str, v: &str| GrantConstraints {
        encryption_context_subset: Some([(k.to_owned(), v.to_owned())].into()),
        ..Default::default()
    };
    let parent = Grant::new(
        PrincipalSpec::user("bob"),
        &["Decrypt", "CreateGrant"],
        None,
        Some(sub("vol", "v1")),
        None,
    )
    .unwrap();
    let parents = std::slice::from_ref(&parent);
    let ok = Grant::new(
        PrincipalSpec::user("alice"),
        &["Decrypt"],
        None,
        Some(sub("VOL", "v1")),
        None,
    )
    .unwrap();
    assert!(evaluate_create_grant(&p, parents, &bob(), &ok).is_allowed());
    let wider_ops = Grant::new(
        PrincipalSpec::user("alice"),
        &["Decrypt", "Encrypt"],
        None,
        Some(sub("vol", "v1")),
        None,
    )
    .unwrap();
    assert!(!evaluate_create_grant(&p, parents, &bob(), &wider_ops).is_allowed());
    let unconstrained =
        Grant::new(PrincipalSpec::user("alice"), &["Decrypt"], None, None, None).unwrap();
    assert!(!evaluate_create_grant(&p, parents, &bob(), &unconstrained).is_allowed());
    assert!(
        !evaluate_create_grant(&p, parents, &alice(), &ok).is_allowed(),
        "alice holds no grant"
    );
    let admin_policy = default_policy();
    assert!(evaluate_create_grant(&admin_policy, &[], &admin(), &unconstrained).is_allowed());
}
