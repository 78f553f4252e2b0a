//! `php-fpm.conf` of the `webmail-php` container and Roundcube's `config.inc.php`, which
//! the image's /etc/roundcube/config.inc.php includes, so that it is all Roundcube reads.

use super::{
    php_fpm_socket, WebmailPlan, DATA_DIR, DES_KEY_LENGTH, LOGIN_PLUGIN, MESSAGE_SIZE_LIMIT,
    REQUEST_LIMIT_MB, UPLOAD_LIMIT_MB, WWW_DATA_ID,
};

/// The des_key's file in [`DATA_DIR`](super::DATA_DIR) (made by [`super::ensure_des_key`]).
pub(super) const DES_KEY_FILE: &str = "des_key";

pub fn render_php_fpm_conf() -> String {
    let socket = php_fpm_socket();
    format!(
        r#"; Rendered by letterbox: the webmail's PHP (container webmail-php). Do not edit.
[global]
error_log = /proc/self/fd/2
daemonize = no

[roundcube]
user = www-data
group = www-data
listen = {socket}
; nginx's workers run as www-data (uid {WWW_DATA_ID}): no one else may talk to PHP.
listen.owner = www-data
listen.group = www-data
listen.mode = 0660
; A few MB per idle worker matter on a Pi: none run while no one reads mail.
pm = ondemand
pm.max_children = 4
pm.process_idle_timeout = 60s
; Roundcube logs to stdout (log_driver 'stdout'): to the container's log, undecorated.
catch_workers_output = yes
decorate_workers_output = no
php_admin_value[upload_max_filesize] = {UPLOAD_LIMIT_MB}M
php_admin_value[post_max_size] = {REQUEST_LIMIT_MB}M
php_admin_value[memory_limit] = 64M
; Uploads land on the data partition, beside Roundcube's temp_dir, not in /tmp's RAM.
php_admin_value[upload_tmp_dir] = {DATA_DIR}/tmp
php_admin_flag[display_errors] = off
php_admin_flag[log_errors] = on
; No session.* admin value: Roundcube sets its own session handler (its database) and
; cookie flags at run time, which an admin value would silently refuse.
"#
    )
}

pub fn render_config_inc_php(plan: &WebmailPlan) -> String {
    let domain = php_string(&plan.domain);
    let login_plugin = php_string(LOGIN_PLUGIN);
    let des_key = php_string(&format!("{DATA_DIR}/{DES_KEY_FILE}"));
    let database = php_string(&format!("sqlite:///{DATA_DIR}/roundcube.db?mode=0600"));
    let temp_dir = php_string(&format!("{DATA_DIR}/tmp/"));
    format!(
        r#"<?php
// Rendered by letterbox from letterbox.toml: Roundcube's whole configuration. Do not edit.
// It holds no secret: the des_key is read from the data partition at run time.

$config = [];

$config['product_name'] = 'Letterbox';
$config['db_dsnw'] = {database};
$config['temp_dir'] = {temp_dir};
$config['log_driver'] = 'stdout';
$config['enable_installer'] = false;

// The key that encrypts each session's IMAP password, made once on the device
// (letterbox::webmail::ensure_des_key): a new one would end every session.
$letterbox_des_key = {des_key};
$config['des_key'] = trim((string) @file_get_contents($letterbox_des_key));
if (strlen($config['des_key']) != {DES_KEY_LENGTH}) {{
    throw new RuntimeException('letterbox: no {DES_KEY_LENGTH}-character des_key in ' . $letterbox_des_key);
}}

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
$config['max_message_size'] = {MESSAGE_SIZE_LIMIT};

// A login `alice` is `box@alice.<letterbox_domain>` ({login_plugin} plugin).
$config['letterbox_domain'] = {domain};
$config['plugins'] = [{login_plugin}];
"#
    )
}

/// A PHP single-quoted string literal of `text`.
fn php_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_strings_escape_quotes_and_backslashes() {
        assert_eq!(php_string("example.org"), "'example.org'");
        assert_eq!(php_string(r"a'b\c"), r"'a\'b\\c'");
    }
}
