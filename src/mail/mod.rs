//! Mail: what Postfix and Dovecot need on the data partition.
pub mod maildir;
pub mod tls;
