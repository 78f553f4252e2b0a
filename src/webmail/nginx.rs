//! `nginx.conf` of the `webmail-nginx` container: HTTPS on 443, a redirect on 80, both
//! behind the agent's PROXY header, Roundcube's files served and its PHP passed to php-fpm.

use std::fmt::Write as _;

use super::{
    php_fpm_socket, WebmailPlan, NGINX_FASTCGI_CONF, NGINX_MIME_TYPES, NGINX_PID_FILE,
    NGINX_TEMP_DIR, REQUEST_LIMIT_MB, ROUNDCUBE_ROOT, TLS_DIR,
};

pub fn render_nginx_conf(plan: &WebmailPlan) -> String {
    let names = plan.server_names.join(" ");
    let mut temp_paths = String::new();
    for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(temp_paths, "    {kind}_temp_path {NGINX_TEMP_DIR}/{kind};");
    }
    let socket = php_fpm_socket();
    format!(
        r#"# Rendered by letterbox: the webmail's nginx (container webmail-nginx). Do not edit.
daemon off;
# Workers as www-data, the only user besides root that may open php-fpm's socket.
user www-data www-data;
worker_processes 1;
pid {NGINX_PID_FILE};
error_log stderr warn;

events {{
    worker_connections 256;
}}

http {{
    include {NGINX_MIME_TYPES};
    default_type application/octet-stream;
    access_log off;
    server_tokens off;
    sendfile on;
{temp_paths}    client_max_body_size {REQUEST_LIMIT_MB}m;

    # The agent forwards every connection from the loopback with a PROXY header that names
    # the client: its address is the one logged and the one Roundcube limits logins by.
    set_real_ip_from 127.0.0.1;
    real_ip_header proxy_protocol;

    server {{
        listen 80 proxy_protocol default_server;
        server_name {names};
        return 301 https://$host$request_uri;
    }}

    server {{
        listen 443 ssl proxy_protocol default_server;
        http2 on;
        server_name {names};
        ssl_certificate {TLS_DIR}/cert.pem;
        ssl_certificate_key {TLS_DIR}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        # No Strict-Transport-Security: with the self-signed certificate it would stop
        # browsers from letting anyone accept it.

        # Roundcube's public directory: its one entry point and links to its static
        # files; its code, configuration and logs are outside it.
        root {ROUNDCUBE_ROOT};
        index index.php;

        # Dot files anywhere (.htaccess and the like).
        location ~ /\. {{
            return 404;
        }}

        location = /index.php {{
            include {NGINX_FASTCGI_CONF};
            fastcgi_pass unix:{socket};
        }}
        # Every request goes through index.php; no other PHP file is run.
        location ~ \.php$ {{
            return 404;
        }}

        location / {{
            try_files $uri $uri/ =404;
        }}
    }}
}}
"#
    )
}
