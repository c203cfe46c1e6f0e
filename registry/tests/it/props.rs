//! Property tests of the parsers that face untrusted input: repository names, digests, routes and
//! manifests never panic, accept exactly their grammar, and what they accept is safe as a storage path.

use atlantis_registry::api::route;
use atlantis_registry::digest::Digest;
use atlantis_registry::manifest;
use atlantis_registry::names::{RepoName, validate_tag};
use atlantis_registry::storage::check_path;
use proptest::prelude::*;

const NAME_RE: &str = r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$";
const TAG_RE: &str = r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";

fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn names_match_the_spec_grammar(s in "[a-zA-Z0-9._/-]{0,40}|\\PC{0,40}") {
        let re = regex::Regex::new(NAME_RE).unwrap();
        let ok = RepoName::parse(&s).is_ok();
        prop_assert_eq!(ok, re.is_match(&s) && s.len() <= 255, "{:?}", s);
        if ok {
            let path = format!("repositories/{s}/_layers");
            prop_assert!(check_path(&path).is_ok());
        }
    }

    #[test]
    fn generated_names_are_accepted(parts in prop::collection::vec(component(), 1..5)) {
        let name = parts.join("/");
        prop_assume!(name.len() <= 255);
        let r = RepoName::parse(&name);
        prop_assert!(r.is_ok(), "{:?}", name);
        let parsed = r.unwrap();
        prop_assert_eq!(parsed.as_str(), name.as_str());
    }

    #[test]
    fn tags_match_the_spec_grammar(s in "[a-zA-Z0-9._-]{0,130}|\\PC{0,20}") {
        let re = regex::Regex::new(TAG_RE).unwrap();
        prop_assert_eq!(validate_tag(&s).is_ok(), re.is_match(&s), "{:?}", s);
    }

    #[test]
    fn digests_parse_or_refuse(s in "(sha256|sha512|md5|SHA256|)[:]?[0-9a-fA-F./]{0,130}|\\PC{0,80}") {
        if let Ok(d) = s.parse::<Digest>() {
            prop_assert_eq!(d.to_string(), s.clone());
            let path = format!("blobs/{}/{}", d.algorithm().as_str(), d.hex());
            prop_assert!(check_path(&path).is_ok());
        }
    }

    #[test]
    fn routes_never_panic_and_names_are_valid(s in "/v2/[a-z0-9%./_:-]{0,60}|\\PC{0,60}") {
        if let Ok(r) = route::parse(&s)
            && let Some(repo) = r.repo()
        {
            prop_assert!(RepoName::parse(repo.as_str()).is_ok());
        }
    }

    #[test]
    fn manifests_never_panic_on_bytes(b in prop::collection::vec(any::<u8>(), 0..512), ct in "|application/vnd.oci.image.manifest.v1\\+json|application/vnd.oci.image.index.v1\\+json|\\PC{0,30}") {
        let _ = manifest::parse(&ct, &b);
    }

    #[test]
    fn manifest_round_trip(layers in prop::collection::vec((any::<[u8; 32]>(), 0u64..1 << 40), 0..8), at in proptest::option::of("[a-z]{1,8}/[a-z][a-z.+]{0,12}")) {
        let desc = |h: &[u8; 32], size: u64| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", hex::encode(h)), "size": size
        });
        let mut m = serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": desc(&[0u8; 32], 2),
            "layers": layers.iter().map(|(h, s)| desc(h, *s)).collect::<Vec<_>>(),
        });
        if let Some(a) = &at {
            m["artifactType"] = serde_json::json!(a);
        }
        let body = serde_json::to_vec(&m).unwrap();
        let p = manifest::parse(manifest::OCI_MANIFEST, &body).unwrap();
        prop_assert_eq!(p.blobs.len(), layers.len() + 1);
        for ((h, s), b) in layers.iter().zip(&p.blobs[1..]) {
            prop_assert_eq!(b.digest.hex(), hex::encode(h));
            prop_assert_eq!(b.size, *s);
        }
        // artifactType, or the config's media type when absent.
        prop_assert_eq!(p.artifact_type, Some(at.clone().unwrap_or_else(|| "application/vnd.oci.image.layer.v1.tar+gzip".to_owned())));
        // Any single-byte corruption is either still a valid manifest or refused, never a panic.
        for i in (0..body.len()).step_by(7) {
            let mut bad = body.clone();
            bad[i] ^= 0x5a;
            let _ = manifest::parse(manifest::OCI_MANIFEST, &bad);
        }
    }
}
