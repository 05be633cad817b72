//! Test certificates for `turns:`: a throwaway CA and leaf certificates it signs, as PEM,
//! so a test client can verify the relay's chain and tell one leaf from another (reload).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;

/// A CA that signs leaves.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    /// PEM of the CA certificate (what a client trusts).
    pub pem: String,
    pub der: CertificateDer<'static>,
}

/// A leaf certificate and its key, as the relay's `[tls]` files hold them.
pub struct Leaf {
    /// The chain, leaf first, then the CA.
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            params,
            key,
        }
    }

    /// A leaf for `names` (IP addresses or DNS names), with `cn` as its common name.
    pub fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A rustls root store holding this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("add CA");
        roots
    }
}
