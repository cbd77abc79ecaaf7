//! TLS to a Bambu Lab printer (rustls with ring). The printer's certificate is issued by
//! Bambu's CA for CN = its serial number, not for its IP address, so the host name is not
//! checked: the chain is verified against the configured CA (default: Bambu Lab's CAs, bundled
//! in `agent/certs/`) and the certificate's CN must equal the configured serial. The explicit `insecure_tls` opt-out skips both and is logged loudly.
//! Every refusal is kept (`TlsDiag`) because the TLS error that reaches the MQTT client says
//! little.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The verifier's last refusal, taken by whoever explains the connection failure.
#[derive(Clone, Debug, Default)]
pub struct TlsDiag(Arc<Mutex<Option<String>>>);

impl TlsDiag {
    fn set(&self, why: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Bambu Lab's printer CAs (`BBL CA`, `BBL CA2 RSA`, `BBL CA2 ECC`, the self-signed roots Bambu
/// Lab publishes for LAN clients): the trust anchors when `connection.ca_file` is not given.
pub const BUNDLED_CA_PEM: &[u8] = include_bytes!("../../certs/bambu-lab-ca.pem");

/// Where the trust anchors came from, for error messages.
const BUNDLED: &str = "the bundled Bambu Lab CAs";

fn roots_from_pem(bytes: &[u8], shown: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bytes) {
        let cert = cert.map_err(|e| format!("{shown} is not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{shown} holds a bad certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(roots)
}

/// Reads the PEM certificates of `path` into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = format!("connection.ca_file {}", path.display());
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    roots_from_pem(&bytes, &shown)
}

/// A client config for the printer `serial`: verified against `ca_file` (default: the bundled
/// Bambu Lab CAs), or unverified when `insecure` (the caller logs that).
pub fn client_config(
    serial: &str,
    ca_file: Option<&Path>,
    insecure: bool,
) -> Result<(ClientConfig, TlsDiag), String> {
    let diag = TlsDiag::default();
    let provider = provider();
    let (roots, anchors) = if insecure {
        (None, String::new())
    } else {
        match ca_file {
            Some(path) => (
                Some(Arc::new(load_roots(path)?)),
                format!("the CA in connection.ca_file {}", path.display()),
            ),
            None => (
                Some(Arc::new(roots_from_pem(BUNDLED_CA_PEM, BUNDLED)?)),
                BUNDLED.to_string(),
            ),
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(SerialVerifier {
        roots,
        anchors,
        serial: serial.to_string(),
        provider: provider.clone(),
        diag: diag.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((config, diag))
}

#[derive(Debug)]
struct SerialVerifier {
    /// `None`: insecure, nothing is checked.
    roots: Option<Arc<RootCertStore>>,
    /// What `roots` are, for the refusal message.
    anchors: String,
    serial: String,
    provider: Arc<CryptoProvider>,
    diag: TlsDiag,
}

impl SerialVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let Some(roots) = &self.roots else {
            return Ok(());
        };
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)
            .map_err(|e| format!("TLS: the printer's certificate cannot be parsed: {e}"))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            format!(
                "TLS: the printer's certificate was not issued by {} ({e}); set connection.ca_file \
                 to the CA that issued it (or insecure_tls = true for a printer whose certificate \
                 cannot be verified)",
                self.anchors
            )
        })?;
        match common_name(end_entity.as_ref()) {
            Some(cn) if cn == self.serial => Ok(()),
            Some(cn) => Err(format!(
                "TLS: the printer's certificate is for serial '{cn}', not the configured '{}': \
                 check connection.serial and that connection.host is this printer",
                self.serial
            )),
            None => Err(format!(
                "TLS: the printer's certificate has no common name; expected the serial '{}'",
                self.serial
            )),
        }
    }
}

impl ServerCertVerifier for SerialVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(why) => {
                self.diag.set(why.clone());
                Err(rustls::Error::General(why))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One DER TLV: (tag, content, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The subject's common name of a DER certificate (UTF8String, PrintableString or IA5String).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xA0 {
        rest = after; // [0] version
    }
    // serialNumber, signature, issuer, validity, then subject
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = tlv(rest)? else {
        return None;
    };
    while !name.is_empty() {
        let (tag, mut rdn, next) = tlv(name)?;
        name = next;
        if tag != SET {
            continue;
        }
        while !rdn.is_empty() {
            let (_, atv, next) = tlv(rdn)?;
            rdn = next;
            let (0x06, oid, value) = tlv(atv)? else {
                continue;
            };
            if oid != OID_COMMON_NAME {
                continue;
            }
            let (vtag, text, _) = tlv(value)?;
            if matches!(vtag, 0x0C | 0x13 | 0x16 | 0x14) {
                return std::str::from_utf8(text).ok().map(String::from);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_reads_long_lengths_and_refuses_truncation() {
        let mut long = vec![0x04, 0x81, 200];
        long.extend(std::iter::repeat_n(7u8, 200));
        let (tag, content, rest) = tlv(&long).unwrap();
        assert_eq!((tag, content.len(), rest.len()), (4, 200, 0));
        assert!(tlv(&long[..100]).is_none());
        assert!(common_name(b"not a certificate").is_none());
        assert!(common_name(&[]).is_none());
    }

    #[test]
    fn without_a_ca_file_the_bundled_bambu_cas_are_the_anchors() {
        let roots = roots_from_pem(BUNDLED_CA_PEM, BUNDLED).unwrap();
        assert_eq!(roots.len(), 3);
        let names: Vec<String> = CertificateDer::pem_slice_iter(BUNDLED_CA_PEM)
            .map(|c| common_name(c.unwrap().as_ref()).unwrap())
            .collect();
        assert_eq!(names, ["BBL CA2 RSA", "BBL CA2 ECC", "BBL CA"]);
        assert!(client_config("01S00A000000000", None, false).is_ok());
        let e = client_config("x", Some(Path::new("/no/such/ca.pem")), false)
            .err()
            .unwrap();
        assert!(e.contains("cannot read connection.ca_file"), "{e}");
        assert!(client_config("x", None, true).is_ok());
    }
}
