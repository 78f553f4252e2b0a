//! The webmail: Roundcube behind nginx and php-fpm, two containers of the
//! `letterbox-webmail` image sharing one network namespace (loopback only; the agent
//! forwards 443 and 80 in, with a PROXY header naming the client, and the front's 993 and
//! 587 out). This module renders their three configuration files, pure functions of
//! `letterbox.toml`, and makes the one secret they need ([`ensure_des_key`]), which is
//! never in a rendered file.
//!
//! Paths here are the containers' own: the agent bind-mounts `STATE/webmail/etc` on
//! [`CONFIG_DIR`], `STATE/tls` on [`TLS_DIR`], `STATE/webmail/sockets` on [`SOCKET_DIR`]
//! and `STATE/webmail/data` on [`DATA_DIR`].

mod des_key;
mod nginx;
mod roundcube;

pub use des_key::{ensure_des_key, DesKeyError, DES_KEY_LENGTH};
pub use nginx::render_nginx_conf;
pub use roundcube::{render_config_inc_php, render_php_fpm_conf};

use crate::config::Config;

// ---- What the image provides (src/image's webmail image): change them with it. ----

/// php-fpm's binary, run as `PHP_FPM_BIN -F -y CONFIG_DIR/php-fpm.conf`.
pub const PHP_FPM_BIN: &str = "/usr/sbin/php-fpm8.4";
/// nginx's binary, run as `NGINX_BIN -c CONFIG_DIR/nginx.conf`.
pub const NGINX_BIN: &str = "/usr/sbin/nginx";
/// Debian's nginx files the rendered nginx.conf includes.
pub const NGINX_MIME_TYPES: &str = "/etc/nginx/mime.types";
pub const NGINX_FASTCGI_CONF: &str = "/etc/nginx/fastcgi.conf";
/// nginx's temporary files (request bodies above its buffer, mostly): a tmpfs, made
/// by nginx's master at start. Its pid file is beside it.
pub const NGINX_TEMP_DIR: &str = "/run/nginx";
pub const NGINX_PID_FILE: &str = "/run/nginx.pid";
/// Roundcube's public directory, the document root: Debian installs Roundcube in
/// /var/lib/roundcube, whose public_html holds index.php and links to the static files.
pub const ROUNDCUBE_ROOT: &str = "/var/lib/roundcube/public_html";
/// Debian's uid and gid of www-data, which runs the PHP pool and nginx's workers and owns
/// [`DATA_DIR`].
pub const WWW_DATA_ID: u32 = 33;
/// The Roundcube plugin that turns a login `alice` into `box@alice.<domain>`.
pub const LOGIN_PLUGIN: &str = "letterbox_login";

// ---- The containers' mounts. ----

/// The rendered files, read-only.
pub const CONFIG_DIR: &str = "/etc/letterbox/webmail";
/// The appliance's TLS pair (`mail::tls`), read-only.
pub const TLS_DIR: &str = "/etc/letterbox/tls";
/// php-fpm's socket, shared by both containers.
pub const SOCKET_DIR: &str = "/run/letterbox-webmail";
/// Roundcube's database, its temporary files and the des_key; www-data's, 0700.
pub const DATA_DIR: &str = "/var/lib/letterbox-webmail";

/// The rendered files' names in [`CONFIG_DIR`].
pub const NGINX_CONF: &str = "nginx.conf";
pub const PHP_FPM_CONF: &str = "php-fpm.conf";
pub const CONFIG_INC_PHP: &str = "config.inc.php";

/// The largest message the front accepts, in bytes: Postfix's default message_size_limit,
/// which the front keeps. Roundcube keeps a message it sends under it, attachments
/// base64-encoded (a third larger) included.
pub const MESSAGE_SIZE_LIMIT: u64 = 10_240_000;
/// The largest upload, in MiB: base64 makes 7 MiB of attachment 9.8 MB of message, the
/// most that still goes out. PHP and Roundcube refuse more, Roundcube with its own message.
pub const UPLOAD_LIMIT_MB: u32 = 7;
/// A request's body, in MiB: an upload of the largest file, with the form around it.
pub const REQUEST_LIMIT_MB: u32 = UPLOAD_LIMIT_MB + 1;

/// What the webmail's files are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebmailPlan {
    /// `<domain>`: a login `alice` is `box@alice.<domain>`.
    pub domain: String,
    /// The names nginx answers to, the host's first (`Webmail::certificate_names`).
    pub server_names: Vec<String>,
}

impl From<&Config> for WebmailPlan {
    fn from(config: &Config) -> WebmailPlan {
        WebmailPlan {
            domain: config.system.domain.clone(),
            server_names: config.webmail.certificate_names(&config.system),
        }
    }
}

/// Each file of [`CONFIG_DIR`] by name, with its text: what the agent writes to
/// `STATE/webmail/etc`.
pub fn render_files(plan: &WebmailPlan) -> [(&'static str, String); 3] {
    [
        (NGINX_CONF, render_nginx_conf(plan)),
        (PHP_FPM_CONF, render_php_fpm_conf()),
        (CONFIG_INC_PHP, render_config_inc_php(plan)),
    ]
}

/// php-fpm's socket, where nginx passes the PHP requests.
fn php_fpm_socket() -> String {
    format!("{SOCKET_DIR}/php-fpm.sock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, DEFAULT_NAME, DEFAULT_TOML};

    fn default_plan() -> WebmailPlan {
        WebmailPlan::from(&parse(DEFAULT_NAME, DEFAULT_TOML).unwrap())
    }

    #[test]
    fn each_rendered_file_matches_its_golden_file() {
        for (name, text) in render_files(&default_plan()) {
            crate::golden::check(&format!("webmail/{name}"), &text);
        }
    }

    #[test]
    fn the_plan_names_the_host_the_domain_and_mail_dot_domain() {
        let text = DEFAULT_TOML.replace("hostname = \"mail\"", "hostname = \"mx\"");
        let plan = WebmailPlan::from(&parse("t.toml", &text).unwrap());
        assert_eq!(plan.domain, "example.org");
        assert_eq!(
            plan.server_names,
            ["mx.example.org", "example.org", "mail.example.org"]
        );
        assert!(render_nginx_conf(&plan)
            .contains("server_name mx.example.org example.org mail.example.org;"));
    }

    #[test]
    fn uploads_stop_at_7_mb_and_requests_at_8_mb_and_messages_at_the_fronts_limit() {
        let [(_, nginx), (_, fpm), (_, roundcube)] = render_files(&default_plan());
        assert!(nginx.contains("client_max_body_size 8m;"), "{nginx}");
        assert!(fpm.contains("php_admin_value[upload_max_filesize] = 7M\n"));
        assert!(fpm.contains("php_admin_value[post_max_size] = 8M\n"));
        assert!(roundcube.contains("$config['max_message_size'] = 10240000;"));
    }

    #[test]
    fn no_secret_is_rendered_the_des_key_is_read_at_run_time() {
        let [_, _, (_, roundcube)] = render_files(&default_plan());
        let line = roundcube
            .lines()
            .find(|l| l.contains("$config['des_key']"))
            .expect("a des_key line");
        assert!(
            line.contains("file_get_contents($letterbox_des_key)"),
            "{line}"
        );
        assert!(roundcube.contains("$letterbox_des_key = '/var/lib/letterbox-webmail/des_key';"));
    }
}
