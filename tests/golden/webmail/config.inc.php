<?php
// Rendered by letterbox from letterbox.toml: Roundcube's whole configuration. Do not edit.
// It holds no secret: the des_key is read from the data partition at run time.

$config = [];

$config['product_name'] = 'Letterbox';
$config['db_dsnw'] = 'sqlite:////var/lib/letterbox-webmail/roundcube.db?mode=0600';
$config['temp_dir'] = '/var/lib/letterbox-webmail/tmp/';
$config['log_driver'] = 'stdout';
$config['enable_installer'] = false;

// The key that encrypts each session's IMAP password, made once on the device
// (letterbox::webmail::ensure_des_key): a new one would end every session.
$letterbox_des_key = '/var/lib/letterbox-webmail/des_key';
$config['des_key'] = trim((string) @file_get_contents($letterbox_des_key));
if (strlen($config['des_key']) != 24) {
    throw new RuntimeException('letterbox: no 24-character des_key in ' . $letterbox_des_key);
}

// The front's IMAP and submission, forwarded by the agent from this namespace's loopback.
// TLS because the front refuses logins in clear text; the certificate is not checked
// because this hop never leaves the appliance, and the certificate names the host, not
// 127.0.0.1 (and may be self-signed).
$config['imap_host'] = 'ssl://127.0.0.1:993';
$config['smtp_host'] = 'tls://127.0.0.1:587';
$config['smtp_user'] = '%u';
$config['smtp_pass'] = '%p';
// One identity, the account's own address, which the user cannot change: the front's
// submission sends only as the login's address, so any other would fail at Send.
$config['identities_level'] = 3;
$letterbox_loopback_tls = [
    'ssl' => [
        'verify_peer' => false,
        'verify_peer_name' => false,
    ],
];
$config['imap_conn_options'] = $letterbox_loopback_tls;
$config['smtp_conn_options'] = $letterbox_loopback_tls;

// Sessions in the database; the cookie only over HTTPS, never sent from other sites.
$config['session_storage'] = 'db';
$config['use_https'] = true;
$config['session_samesite'] = 'Strict';
// Failed logins a minute for one user name, after which Roundcube refuses its logins.
$config['login_rate_limit'] = 3;

// The front's limit: Roundcube keeps the whole message, attachments base64-encoded,
// under it (so at most 7 MB of attachments, PHP's upload limit, go into one).
$config['max_message_size'] = 10240000;

// A login `alice` is `box@alice.<letterbox_domain>` ('letterbox_login' plugin).
$config['letterbox_domain'] = 'example.org';
$config['plugins'] = ['letterbox_login'];
