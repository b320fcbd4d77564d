//! Connection strings as messages and logs may show them: without credentials, in either form
//! PostgreSQL takes (a URL, or `key=value` pairs), wherever the password is written.

/// Keys whose values are secrets (in `key=value` pairs and in a URL's query).
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

/// `connection` (a URL or `key=value` pairs) without its credentials.
pub fn redacted(connection: &str) -> String {
    match connection.split_once("://") {
        Some((scheme, rest)) => redacted_url(scheme, rest),
        None => redacted_pairs(connection),
    }
}

fn is_secret(key: &str) -> bool {
    SECRET_KEYS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(key.trim()))
}

fn redacted_url(scheme: &str, rest: &str) -> String {
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let shown = match authority_and_path.rsplit_once('@') {
        Some((_, host)) => format!("…@{host}"),
        None => authority_and_path.to_owned(),
    };
    let Some(query) = query else {
        return format!("{scheme}://{shown}");
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret(k) => format!("{k}=…"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{scheme}://{shown}?{}", query.join("&"))
}

/// `host=db password='it''s secret' user=x` → `host=db password=… user=x`: values may be
/// quoted (with spaces and `\'` inside), as libpq reads them.
fn redacted_pairs(pairs: &str) -> String {
    let mut out = Vec::new();
    let mut chars = pairs.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            out.push(key);
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            value.push('\'');
            while let Some(c) = chars.next() {
                value.push(c);
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        out.push(if is_secret(&key) {
            format!("{key}=…")
        } else {
            format!("{key}={value}")
        });
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn credentials_never_show_in_either_form() {
        for (given, shown) in [
            (
                "postgres://triage:s3cret@db:5432/triage",
                "postgres://…@db:5432/triage",
            ),
            (
                "postgresql://db/triage?user=t&password=s3cret&sslmode=require",
                "postgresql://db/triage?user=t&password=…&sslmode=require",
            ),
            (
                "host=db user=triage password=s3cret dbname=triage",
                "host=db user=triage password=… dbname=triage",
            ),
            (
                "host=db password = 'it\\'s s3cret' sslpassword=s3cret port=5432",
                "host=db password=… sslpassword=… port=5432",
            ),
            ("host=/var/run/postgresql", "host=/var/run/postgresql"),
        ] {
            let got = redacted(given);
            assert_eq!(got, shown);
            assert!(!got.contains("s3cret"), "{got}");
        }
    }
}
