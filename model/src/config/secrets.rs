//! Keeping credentials out of messages. Credentials come from the environment only, yet a user
//! may paste one into a URL by mistake (`s3://KEY:SECRET@bucket/run`, or a pre-signed URL with
//! `?X-Amz-Signature=...`): every message that quotes a URL or a `--set` argument passes it
//! through [`redact_url`] first, and the configuration refuses such URLs. Storage errors pass
//! through [`redact_secrets`], which hides the values of the credential variables themselves.

/// `text` (a URL, or a `--set key=URL` argument) with the `user:secret@` part of any URL in it
/// replaced by `***@` and the value of every query parameter by `***`.
pub fn redact_url(text: &str) -> String {
    let (before_query, query) = match text.split_once('?') {
        Some((head, q)) => (head, Some(q)),
        None => (text, None),
    };
    let mut out = match before_query.split_once("://") {
        Some((head, rest)) => {
            let authority = rest.split('/').next().unwrap_or_default();
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{head}://***@{host}{}", &rest[authority.len()..]),
                None => before_query.to_string(),
            }
        }
        None => before_query.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Environment variables whose values must never appear in a message.
pub const SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_SAS_TOKEN",
    "GOOGLE_BEARER_TOKEN",
];

/// `message` with the value of every credential variable set in the environment
/// ([`SECRET_VARS`]) and every value in `also` (credentials given explicitly) replaced by `***`.
/// Values shorter than 4 characters are left alone (they would mangle ordinary words).
pub fn redact_secrets(message: &str, also: &[String]) -> String {
    let from_env = SECRET_VARS.iter().filter_map(|var| std::env::var(var).ok());
    let mut out = message.to_string();
    for v in from_env.chain(also.iter().cloned()) {
        if v.len() >= 4 {
            out = out.replace(&v, "***");
        }
    }
    out
}

/// Why a storage URL (`s3://`, `gs://`, `az://`, `file://` or a path) must not be used as it
/// is: it holds credentials. `None` when it is fine.
pub fn url_secret_problem(url: &str) -> Option<&'static str> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme == "file" {
        return None;
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Some(
            "holds credentials (user:secret@); give them in the environment \
             (AWS_*, GOOGLE_*, AZURE_*) instead",
        );
    }
    if rest.contains('?') {
        return Some(
            "holds a query string (a pre-signed or SAS URL?); object-store URLs are \
             scheme://bucket/prefix, with credentials in the environment (AWS_*, GOOGLE_*, AZURE_*)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_and_query_values_are_hidden() {
        assert_eq!(
            redact_url("s3://AKID:hunter2@bucket/run"),
            "s3://***@bucket/run"
        );
        assert_eq!(
            redact_url("checkpoint.url=s3://b/r?X-Amz-Signature=abc123&X-Amz-Credential=AKID%2F1"),
            "checkpoint.url=s3://b/r?X-Amz-Signature=***&X-Amz-Credential=***"
        );
        assert_eq!(redact_url("/data/run-1"), "/data/run-1");
        assert_eq!(redact_url("train.seed=3"), "train.seed=3");
    }

    #[test]
    fn secret_urls_are_named_problems() {
        assert!(url_secret_problem("s3://a:b@bucket/x").is_some());
        assert!(url_secret_problem("az://c/x?sig=abc").is_some());
        assert!(url_secret_problem("s3://bucket/x").is_none());
        assert!(url_secret_problem("/local/dir?odd").is_none());
        assert!(url_secret_problem("file:///x?y").is_none());
    }
}
