//! Certificates for TLS tests: a CA made on the spot (rcgen) and the
//! certificates it signs, as PEM.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A certificate authority that exists for one test.
pub struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    /// A self-signed CA called `name`.
    pub fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Self(CertifiedIssuer::self_signed(p, key).expect("CA"))
    }

    /// The CA's own certificate, PEM: what a peer verifies with.
    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// (certificate PEM, key PEM) for `names` (DNS names or IP
    /// addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let p = CertificateParams::new(names).expect("params");
        let cert = p.signed_by(&key, &self.0).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// A directory for one test's PEM files, removed when dropped.
pub struct Dir(std::path::PathBuf);

impl Dir {
    /// A fresh directory under the system's temporary one, named for
    /// `test` and this process.
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("evenflow-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    /// Writes `text` to `name` in the directory; its path, for a flag.
    pub fn put(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
