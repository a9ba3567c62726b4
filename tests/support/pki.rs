//! A test certificate authority (rcgen) and the certificates it issues: server certificates for
//! the TLS listeners under test (scopegate's own, Envoy's, the test IdP's) and client
//! certificates for mutual TLS and certificate-bound tokens (RFC 8705). Every leaf names its
//! subject as common name and DNS SAN, and 127.0.0.1 as IP SAN.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a step that fails must fail the calling test, with its message"
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use sha2::{Digest, Sha256};

/// A test certificate authority.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate (PEM and DER) and its key (PEM), with its RFC 8705 thumbprint.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    /// base64url(SHA-256(DER)): what `cnf["x5t#S256"]` of a bound token carries (also as the
    /// method [`Leaf::x5t_s256`]).
    pub x5t_s256: String,
}

impl Leaf {
    /// RFC 8705 §3.1: base64url SHA-256 of the DER (the field `x5t_s256`, as a method).
    pub fn x5t_s256(&self) -> String {
        self.x5t_s256.clone()
    }

    /// The PEM as Envoy forwards it in `source.certificate` (every byte but the unreserved ones
    /// percent-encoded).
    pub fn url_encoded(&self) -> String {
        self.cert_pem
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
}

impl TestCa {
    /// A new self-signed CA with common name `name` (a fresh key: two CAs of the same name are
    /// look-alikes, not the same CA).
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        TestCa {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `name` (and 127.0.0.1) with a fresh key, for `purpose` only.
    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let der = cert.der().to_vec();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(&der)),
            der,
        }
    }

    /// A client certificate (TLS client authentication only).
    pub fn client(&self, name: &str) -> Leaf {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server certificate for `name` and 127.0.0.1 (TLS server authentication only).
    pub fn server(&self, name: &str) -> Leaf {
        self.issue(name, ExtendedKeyUsagePurpose::ServerAuth)
    }
}
