use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;

use rcgen::CertificateSigningRequestParams;
use x509_parser::extensions::GeneralName;

use super::*;

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "identity-ca-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CSR asking for things the CA must ignore (a DNS SAN, another URI, a subject).
fn csr_with_extras(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    ));
    params
        .distinguished_name
        .push(DnType::CommonName, "please make me admin");
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn der_of(pem_text: &str) -> CertificateDer<'static> {
    pem::certs(pem_text).unwrap().remove(0)
}

fn parsed<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    X509Certificate::from_der(der).unwrap().1
}

/// Verifies `chain` (leaf first, root last as returned by sign_csr) with webpki.
fn verify_with_webpki(chain: &[String]) {
    let leaf = der_of(&chain[0]);
    let intermediates: Vec<_> = chain[1..chain.len() - 1]
        .iter()
        .map(|p| der_of(p))
        .collect();
    let roots = pem::certs(chain.last().unwrap()).unwrap();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    ee.verify_for_usage(
        algs.all,
        &anchors,
        &intermediates,
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .unwrap();
}

#[test]
fn signs_only_the_authenticated_identity_with_exact_ttl() {
    let ca = CaSigner::generate("cluster.local").unwrap();
    let key = KeyPair::generate().unwrap();
    let identity = id("spiffe://cluster.local/ns/shop/sa/cart");
    let ttl = Duration::from_secs(3600);
    let before = unix_now();
    let chain = ca.sign_csr(&csr_with_extras(&key), &identity, ttl).unwrap();
    let after = unix_now();

    assert_eq!(chain.len(), 2, "leaf + root for a self-signed CA");
    assert!(
        chain
            .iter()
            .all(|p| p.ends_with("-----END CERTIFICATE-----\n"))
    );
    assert_eq!(chain[1], ca.root_pem());

    let leaf_der = der_of(&chain[0]);
    let leaf = parsed(&leaf_der);
    let sans: Vec<_> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .clone();
    assert_eq!(sans.len(), 1, "only the identity: {sans:?}");
    assert!(matches!(sans[0], GeneralName::URI(u) if u == identity.to_string()));
    assert_eq!(leaf.subject().iter().count(), 0, "CSR subject ignored");
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );

    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    assert!(
        na >= before + 3600 && na <= after + 3600,
        "TTL honoured: {na}"
    );
    assert_eq!(na - nb, 3600 + CLOCK_SKEW.as_secs() as i64);
    // A short lifetime is backdated by a tenth of it, so half life stays in the future.
    assert_eq!(
        backdate(Duration::from_secs(16)),
        Duration::from_millis(1600)
    );
    assert_eq!(backdate(Duration::from_secs(86_400)), CLOCK_SKEW);
    verify_with_webpki(&chain);

    // Serials are random.
    let again = ca.sign_csr(&csr_with_extras(&key), &identity, ttl).unwrap();
    assert_ne!(parsed(&der_of(&again[0])).raw_serial(), leaf.raw_serial());
}

#[test]
fn rejects_a_csr_with_a_tampered_signature() {
    let ca = CaSigner::generate("cluster.local").unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = csr_with_extras(&key);
    let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem::encode("CERTIFICATE REQUEST", &der);
    let identity = id("spiffe://cluster.local/ns/a/sa/b");
    let err = ca
        .sign_csr(&tampered, &identity, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, CaError::CsrSignature), "{err}");

    let err = ca
        .sign_csr("not a csr", &identity, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    let err = ca.sign_csr(&csr, &identity, Duration::ZERO).unwrap_err();
    assert!(matches!(err, CaError::InvalidRequest(_)), "{err}");
    // The untampered CSR is fine (and rcgen agrees it verifies).
    CertificateSigningRequestParams::from_pem(&csr).unwrap();
    ca.sign_csr(&csr, &identity, Duration::from_secs(60))
        .unwrap();
}

/// Writes an Istio plug-in CA (root → intermediate) into `dir`; returns the root PEM.
fn write_plugged(dir: &Path, include_root_in_chain: bool) -> String {
    let root = CaSigner::generate("plugged-root").unwrap();
    let root_pem = root.root_pem();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "plugged-intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(86400 * 365)).into();
    let inter = params.signed_by(&key, &root.issuer).unwrap();
    fs::write(dir.join(CA_CERT_FILE), inter.pem()).unwrap();
    fs::write(dir.join(CA_KEY_FILE), key.serialize_pem()).unwrap();
    fs::write(dir.join(ROOT_CERT_FILE), &root_pem).unwrap();
    let chain = if include_root_in_chain {
        format!("{}{}", inter.pem(), root_pem)
    } else {
        inter.pem()
    };
    fs::write(dir.join(CERT_CHAIN_FILE), chain).unwrap();
    root_pem
}

#[test]
fn plugged_ca_chains_end_in_the_plugged_root() {
    for include_root in [true, false] {
        let dir = tempdir("plugged");
        let root_pem = write_plugged(&dir, include_root);
        let ca = CaSigner::from_plugged(&dir).unwrap();
        assert_eq!(ca.root_pem(), root_pem);
        assert_eq!(ca.intermediates_pem().len(), 1, "root is not repeated");
        let key = KeyPair::generate().unwrap();
        let identity = id("spiffe://cluster.local/ns/shop/sa/cart");
        let chain = ca
            .sign_csr(&csr_with_extras(&key), &identity, Duration::from_secs(600))
            .unwrap();
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        assert_eq!(
            chain[1],
            fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap()
        );
        assert_eq!(chain[2], root_pem);
        verify_with_webpki(&chain);

        let serving = ca
            .issue_serving_cert(
                &["istiod.istio-system.svc".to_string()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                Duration::from_secs(600),
            )
            .unwrap();
        let certs = pem::certs(&serving.chain_pem).unwrap();
        assert_eq!(certs.len(), 2, "serving leaf + intermediate");
        let leaf = parsed(&certs[0]);
        let names = &leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(names.contains(&GeneralName::DNSName("istiod.istio-system.svc")));
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert!(
            leaf.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn plugged_ca_errors_name_the_file() {
    let dir = tempdir("plugged-bad");
    write_plugged(&dir, true);
    // Missing key.
    let key = fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
    fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
    let err = CaSigner::from_plugged(&dir).unwrap_err();
    assert!(matches!(err, CaError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");

    // A key that is not the CA certificate's.
    fs::write(
        dir.join(CA_KEY_FILE),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = CaSigner::from_plugged(&dir).unwrap_err();
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");
    fs::write(dir.join(CA_KEY_FILE), key).unwrap();

    // A root that did not sign the intermediate.
    let other = CaSigner::generate("other").unwrap();
    fs::write(dir.join(ROOT_CERT_FILE), other.root_pem()).unwrap();
    let err = CaSigner::from_plugged(&dir).unwrap_err();
    assert!(err.to_string().contains(CERT_CHAIN_FILE), "{err}");
    assert!(
        err.to_string().contains("not signed by any certificate"),
        "{err}"
    );

    // Garbage.
    fs::write(dir.join(ROOT_CERT_FILE), "garbage").unwrap();
    let err = CaSigner::from_plugged(&dir).unwrap_err();
    assert!(err.to_string().contains(ROOT_CERT_FILE), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn state_dir_persists_and_reloads_the_same_root() {
    let dir = tempdir("state").join("ca");
    let first = CaSigner::load_or_create(&dir).unwrap();
    let mode = fs::metadata(dir.join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode");
    for f in [CA_CERT_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        assert!(dir.join(f).exists(), "{f} written");
    }
    let second = CaSigner::load_or_create(&dir).unwrap();
    assert_eq!(first.root_pem(), second.root_pem());

    // The reloaded CA signs with the same key: its leaves verify against the first root.
    let key = KeyPair::generate().unwrap();
    let mut chain = second
        .sign_csr(
            &csr_with_extras(&key),
            &id("spiffe://cluster.local/ns/a/sa/b"),
            Duration::from_secs(60),
        )
        .unwrap();
    *chain.last_mut().unwrap() = first.root_pem();
    verify_with_webpki(&chain);

    fs::remove_file(dir.join(ROOT_CERT_FILE)).unwrap();
    let err = CaSigner::load_or_create(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            CaError::IncompleteState {
                missing: ROOT_CERT_FILE,
                ..
            }
        ),
        "{err}"
    );
    let _ = fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn revocation_lists_revoke_exactly_the_listed_serials() {
    let ca = CaSigner::generate("cluster.local").unwrap();
    let identity = id("spiffe://cluster.local/ns/default/sa/sleep");
    let issue = || {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let chain = ca
            .sign_csr(&csr_with_extras(&key), &identity, Duration::from_secs(3600))
            .unwrap();
        der_of(&chain[0])
    };
    let (revoked, kept) = (issue(), issue());
    let serial = hbone::cert::serial_of(&revoked).unwrap();
    // `/config_dump` hex, with or without separators.
    let with_colons: Vec<String> = serial
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    for written in [serial.clone(), with_colons.join(":")] {
        let pem = ca
            .revocation_list(&[&written], Duration::from_secs(86400))
            .unwrap();
        let crls = hbone::Revocations::new(hbone::crl::parse_pem(pem.as_bytes()).unwrap());
        assert!(crls.is_revoked(&revoked), "{written} is listed");
        assert!(!crls.is_revoked(&kept), "another serial is not");
    }
    let err = ca
        .revocation_list(&["xyz"], Duration::from_secs(60))
        .unwrap_err();
    assert!(err.to_string().contains("xyz"), "{err}");
}
