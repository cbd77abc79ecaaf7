//! Certificates made at test time (rcgen): a CA, and printer certificates it issues with a
//! chosen CN, as a rustls server config for the fake broker. Tests only (feature `fake`).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use std::sync::Arc;

pub struct TestPki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl TestPki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Raft3D tests");
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        TestPki { ca, ca_key }
    }

    /// The CA certificate in PEM, as a user would put in `ca_file`.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A printer certificate for `cn` (and the DER of it), issued by this CA.
    pub fn issue(&self, cn: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("leaf certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    /// A TLS server config presenting a certificate for `cn` and this CA.
    pub fn server_config(&self, cn: &str) -> Arc<ServerConfig> {
        let (cert, key) = self.issue(cn);
        let chain = vec![cert, self.ca.der().clone()];
        let config = ServerConfig::builder_with_provider(super::bambu_tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_a_real_certificate() {
        let pki = TestPki::new("Test CA");
        let (cert, _) = pki.issue("01P00A123456789");
        assert_eq!(
            super::super::bambu_tls::common_name(cert.as_ref()).as_deref(),
            Some("01P00A123456789")
        );
    }
}
