//! The mail's certificate from an ACME CA (RFC 8555) with instant-acme: the account, kept
//! on the data partition, and an order for the appliance's names (`<hostname>.<domain>`,
//! and the webmail's) proven over DNS-01. The caller publishes the DNS-01 answers (the
//! agent puts them in its own zone), so nothing here needs port 80. The certificate's key
//! is made here, on the device; only its CSR leaves.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::config::Acme;
use crate::dns::AcmeAnswer;

/// The account's credentials (its private key among them), under the state directory.
pub const ACCOUNT_FILE: &str = "acme/account.json";
/// How long the CA may take to validate the order, then to issue the certificate.
const VALIDATION_LIMIT: Duration = Duration::from_secs(120);
/// How long a connection to the CA may take to open; the caller limits the whole order.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME CA file {}: {why}", .path.display())]
    CaFile { path: PathBuf, why: String },
    #[error("the ACME account file {}", .path.display())]
    AccountFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Where only: serde_json's message may quote a value, the account's private key.
    #[error("the ACME account file {}:{line}:{column} is not an account's credentials (JSON with `directory` and `credentials`); remove it to register a new account", .path.display())]
    AccountCorrupt {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("{what} at {directory}")]
    Protocol {
        what: &'static str,
        directory: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the CA offers no DNS-01 challenge for {name}")]
    NoDns01 { name: String },
    #[error("the CA refused the authorization for {name} ({status:?})")]
    Unauthorized {
        name: String,
        status: AuthorizationStatus,
    },
    #[error("the order is {status:?}, not ready, after validation: {problems}")]
    NotReady {
        status: OrderStatus,
        problems: String,
    },
    #[error("publishing the DNS-01 answer: {0}")]
    Publish(String),
    #[error("making the certificate's key or request")]
    Key(#[source] rcgen::Error),
}

/// A certificate issued: its chain (the certificate first) and its key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// The account at the configured CA: read from `STATE/acme/account.json`, or registered
/// and written there (mode 0600) the first time. Credentials made for another directory
/// are replaced by a new account.
pub async fn account(state: &Path, acme: &Acme) -> Result<Account, AcmeError> {
    let path = state.join(ACCOUNT_FILE);
    let protocol = |what| {
        let directory = acme.directory.clone();
        move |source| AcmeError::Protocol {
            what,
            directory,
            source,
        }
    };
    let saved = blocking({
        let path = path.clone();
        move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(|source| AcmeError::AccountFile {
        path: path.clone(),
        source,
    })?;
    if let Some(bytes) = saved {
        let saved: SavedAccount =
            serde_json::from_slice(&bytes).map_err(|e| AcmeError::AccountCorrupt {
                path: path.clone(),
                line: e.line(),
                column: e.column(),
            })?;
        if saved.directory == acme.directory {
            return Account::builder_with_http(http_client(state, acme).await?)
                .from_credentials(saved.credentials)
                .await
                .map_err(protocol("restoring the ACME account"));
        }
        log::info!(
            "ACME: the saved account is at {}, not {}: registering a new one",
            saved.directory,
            acme.directory
        );
    }
    let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(http_client(state, acme).await?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await
        .map_err(protocol("registering an ACME account"))?;
    let saved = SavedAccount {
        directory: acme.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec(&saved).expect("credentials serialize");
    blocking({
        let path = path.clone();
        move || {
            std::fs::create_dir_all(path.parent().expect("the file is in a directory"))?;
            crate::atomic_file::replace_mode(&path, &json, 0o600)
        }
    })
    .await
    .map_err(|source| AcmeError::AccountFile { path, source })?;
    log::info!("ACME: registered an account at {}", acme.directory);
    Ok(account)
}

/// `work` on a thread of its own: file I/O stays off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// HTTPS to the CA, trusting the roots of `acme_ca_file` if given, else Mozilla's (the
/// appliance has no CA bundle of its own).
async fn http_client(state: &Path, acme: &Acme) -> Result<Box<dyn HttpClient>, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    match &acme.ca_file {
        Some(file) => {
            use rustls::pki_types::pem::PemObject;
            let path = state.join(file);
            let bad = |why: String| AcmeError::CaFile {
                path: path.clone(),
                why,
            };
            let read = path.clone();
            let certs = tokio::task::spawn_blocking(move || {
                rustls::pki_types::CertificateDer::pem_file_iter(&read)
                    .map_err(|e| e.to_string())?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| bad(e.to_string()))?
            .map_err(bad)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad(
                    "no usable certificate; expected PEM CA certificates".into()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(CONNECT_LIMIT));
    // The scheme is https_only's to check, below.
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, BodyWrapper<Bytes>>(https);
    Ok(Box::new(client))
}

/// Orders one certificate for all of `names`. `publish` is given the DNS-01 answers and
/// must return once they are served; it is called again with none when the CA has looked,
/// whatever the outcome.
pub async fn order<F>(
    account: &Account,
    directory: &str,
    names: &[String],
    mut publish: impl FnMut(Vec<AcmeAnswer>) -> F,
) -> Result<Issued, AcmeError>
where
    F: Future<Output = Result<(), String>>,
{
    let validated = validate(account, directory, names, &mut publish).await;
    if let Err(why) = publish(Vec::new()).await {
        log::warn!("ACME: the DNS-01 answer was not withdrawn: {why}");
    }
    let mut order = validated?;
    let protocol = |what| {
        move |source| AcmeError::Protocol {
            what,
            directory: directory.to_string(),
            source,
        }
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(AcmeError::Key)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(AcmeError::Key)?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(AcmeError::Key)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(protocol("finalizing the order"))?;
    let chain_pem = order
        .poll_certificate(&retries())
        .await
        .map_err(protocol("fetching the certificate"))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// A new order for `names`, the DNS-01 answer of each published and the CA told, polled
/// until it is ready for its CSR.
async fn validate<F>(
    account: &Account,
    directory: &str,
    names: &[String],
    publish: &mut impl FnMut(Vec<AcmeAnswer>) -> F,
) -> Result<instant_acme::Order, AcmeError>
where
    F: Future<Output = Result<(), String>>,
{
    let protocol = |what| {
        move |source| AcmeError::Protocol {
            what,
            directory: directory.to_string(),
            source,
        }
    };
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(protocol("placing an order"))?;
    let mut answers = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(protocol("fetching an authorization"))?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => return Err(AcmeError::Unauthorized { name, status }),
        }
        let mut challenge = authz
            .challenge(ChallengeType::Dns01)
            .ok_or_else(|| AcmeError::NoDns01 { name: name.clone() })?;
        answers.push(AcmeAnswer {
            name: name.clone(),
            value: challenge.key_authorization().dns_value(),
        });
        publish(answers.clone()).await.map_err(AcmeError::Publish)?;
        log::info!("ACME: DNS-01 answer for {name} published; asking the CA to look");
        challenge
            .set_ready()
            .await
            .map_err(protocol("telling the CA the challenge is ready"))?;
    }
    let status = order
        .poll_ready(&retries())
        .await
        .map_err(protocol("waiting for validation"))?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::NotReady {
            status,
            problems: challenge_problems(&mut order).await,
        });
    }
    Ok(order)
}

/// What the CA said about each failed challenge, for the log.
async fn challenge_problems(order: &mut instant_acme::Order) -> String {
    let mut problems = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for challenge in &authz.challenges {
            if let Some(error) = &challenge.error {
                problems.push(error.to_string());
            }
        }
    }
    if problems.is_empty() {
        "the CA gave no reason".into()
    } else {
        problems.join("; ")
    }
}

fn retries() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_secs(1))
        .backoff(1.5)
        .timeout(VALIDATION_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_corrupt_account_file_is_reported_by_line_and_column_never_quoting_it() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state.path().join("acme")).unwrap();
        // A value serde_json would quote in its message: here, where the key would be.
        std::fs::write(
            state.path().join(ACCOUNT_FILE),
            "{\"directory\": \"https://ca.example.net/dir\",\n \"credentials\": \"MIGHAgEAMBMGByqGSM49\"}",
        )
        .unwrap();
        let acme = Acme {
            directory: "https://ca.example.net/dir".into(),
            contact: None,
            ca_file: None,
        };
        let Err(e) = account(state.path(), &acme).await else {
            panic!("a corrupt account file was accepted");
        };
        let message = crate::error_chain(&e);
        assert!(
            matches!(e, AcmeError::AccountCorrupt { line: 2, .. }),
            "{message}"
        );
        assert!(message.contains("acme/account.json:2:"), "{message}");
        assert!(!message.contains("MIGHAgEAMBMGByqGSM49"), "{message}");
    }
}
