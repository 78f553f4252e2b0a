use super::*;

use std::time::SystemTime;

#[test]
fn before_tls_only_capability_noop_id_starttls_and_logout_are_answered() {
    let (reply, next) = answer("a1 capability\r\n");
    assert_eq!(
        reply,
        "* CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED\r\na1 OK Capability completed.\r\n"
    );
    assert_eq!(next, Next::Read);
    assert_eq!(
        answer("x NOOP\r\n"),
        ("x OK NOOP completed.\r\n".into(), Next::Read)
    );
    assert_eq!(
        answer("x ID (\"name\" \"Thunderbird\")\r\n"),
        ("* ID NIL\r\nx OK ID completed.\r\n".into(), Next::Read)
    );
    assert_eq!(answer("z logout\n").1, Next::Close);
    assert_eq!(
        answer("t StartTLS\r\n"),
        ("t OK Begin TLS negotiation now.\r\n".into(), Next::StartTls)
    );
}

#[test]
fn a_login_in_clear_is_refused_and_garbage_counts_as_bad() {
    for login in ["a LOGIN alice secret\r\n", "a AUTHENTICATE PLAIN\r\n"] {
        let (reply, next) = answer(login);
        assert!(reply.starts_with("a NO [PRIVACYREQUIRED]"), "{reply}");
        assert!(!reply.contains("secret"), "{reply}");
        assert_eq!(next, Next::Read);
    }
    for bad in [
        "\r\n",
        "* NOOP\r\n",
        "+ NOOP\r\n",
        "a\r\n",
        "a SELECT INBOX\r\n",
        "a STARTTLS now\r\n",
    ] {
        assert_eq!(answer(bad).1, Next::Bad, "{bad:?}");
    }
}

/// A client talking to [`until_starttls`] over an in-memory pipe: what it sends, then
/// everything the server wrote until it returned, and the server's end of the pipe.
async fn talk(
    sent: &[u8],
) -> (
    String,
    Option<tokio::io::DuplexStream>,
    tokio::io::DuplexStream,
) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client.write_all(sent).await.unwrap();
    let server = until_starttls(server).await.unwrap();
    let mut replies = vec![0; 64 * 1024];
    let n = client.read(&mut replies).await.unwrap();
    (
        String::from_utf8_lossy(&replies[..n]).into(),
        server,
        client,
    )
}

#[tokio::test]
async fn starttls_hands_over_the_connection_and_drops_what_was_sent_after_it() {
    let (replies, server, mut client) =
        talk(b"a CAPABILITY\r\nb LOGIN alice x\r\nc STARTTLS\r\nd LOGIN injected x\r\n").await;
    assert!(replies.starts_with("* OK [CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED]"));
    assert!(
        replies.ends_with("c OK Begin TLS negotiation now.\r\n"),
        "{replies}"
    );
    assert!(!replies.contains("d "), "{replies}");
    let mut server = server.expect("STARTTLS hands the connection over");
    // What comes next is the handshake's: the line sent before it is gone.
    client.write_all(b"\x16handshake").await.unwrap();
    let mut next = [0; 10];
    server.read_exact(&mut next).await.unwrap();
    assert_eq!(&next, b"\x16handshake");
}

#[tokio::test]
async fn logout_a_line_too_long_and_ten_bad_commands_end_the_connection() {
    let (replies, server, _client) = talk(b"a LOGOUT\r\n").await;
    assert!(replies.ends_with("* BYE Logging out.\r\na OK Logout completed.\r\n"));
    assert!(server.is_none());

    let long = format!("a NOOP {}\r\n", "x".repeat(2000));
    let (replies, server, _client) = talk(long.as_bytes()).await;
    assert!(
        replies.ends_with("* BYE Command line too long.\r\n"),
        "{replies}"
    );
    assert!(server.is_none());

    let (replies, server, _client) = talk("a FETCH 1\r\n".repeat(10).as_bytes()).await;
    assert!(
        replies.ends_with("* BYE Too many invalid commands.\r\n"),
        "{replies}"
    );
    assert!(server.is_none());

    let (mut client, server) = tokio::io::duplex(1024);
    client.shutdown().await.unwrap();
    assert!(
        until_starttls(server).await.unwrap().is_none(),
        "a client that left"
    );
}

/// A fresh self-signed pair's two files.
fn new_pair(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    crate::mail::tls::ensure_self_signed(dir.path(), &names, SystemTime::now()).unwrap();
    let read = |f| std::fs::read(dir.path().join(f)).unwrap();
    (read(CERT_FILE), read(KEY_FILE))
}

fn install(dir: &Path, file: &str, bytes: &[u8]) {
    // As the agent replaces them: a new file renamed over the old.
    let new = dir.join(format!(".{file}.new"));
    std::fs::write(&new, bytes).unwrap();
    std::fs::rename(new, dir.join(file)).unwrap();
}

fn leaf(pair: &CertifiedKey) -> Vec<u8> {
    pair.cert[0].to_vec()
}

#[test]
fn a_replaced_pair_serves_from_the_next_handshake_and_a_half_replaced_one_never() {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertFiles::new(dir.path());
    assert!(certs.current().is_none(), "no files, no certificate");

    let (first_cert, first_key) = new_pair(&["mail.example.org"]);
    install(dir.path(), KEY_FILE, &first_key);
    install(dir.path(), CERT_FILE, &first_cert);
    let first = certs.current().expect("the pair serves");
    assert_eq!(
        leaf(&first),
        CertificateDer::from_pem_slice(&first_cert)
            .unwrap()
            .to_vec()
    );

    // A renewal's certificate before its key: the old pair serves on meanwhile.
    let (second_cert, second_key) = new_pair(&["mail.example.org"]);
    install(dir.path(), CERT_FILE, &second_cert);
    assert_eq!(leaf(&certs.current().unwrap()), leaf(&first));
    install(dir.path(), KEY_FILE, &second_key);
    let second = certs.current().unwrap();
    assert_eq!(
        leaf(&second),
        CertificateDer::from_pem_slice(&second_cert)
            .unwrap()
            .to_vec()
    );

    // A broken file keeps the last good pair too.
    install(dir.path(), CERT_FILE, b"not a certificate");
    assert_eq!(leaf(&certs.current().unwrap()), leaf(&second));
}
