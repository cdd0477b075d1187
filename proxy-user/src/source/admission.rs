//! What the API server would have refused before an object could claim anything. Objects
//! from the Kubernetes source have been through it; objects from a manifest directory
//! have not, so the manifest source asks here first: a Service or EndpointSlice with an
//! empty or malformed name or namespace, or a Service whose `clusterIP` and
//! `clusterIPs[0]` disagree, is refused with the field that is wrong, and never reaches the
//! model, where it could take a good Service's frontend.

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// Why an object is refused: the field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Refusal {
    pub field: &'static str,
    pub problem: String,
}

fn refuse(field: &'static str, problem: String) -> Refusal {
    Refusal { field, problem }
}

/// A Service as the API server validates it (the parts the proxy reads).
pub fn check_service(service: &Service) -> Result<(), Refusal> {
    // Service names are DNS-1035 labels: they become DNS names under the namespace.
    check_meta(&service.metadata, dns1035_label)?;
    let Some(spec) = &service.spec else {
        return Ok(());
    };
    if let (Some(ip), Some(first)) = (
        spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()),
        spec.cluster_ips.as_ref().and_then(|ips| ips.first()),
    ) && ip != first
    {
        return Err(refuse(
            "spec.clusterIPs[0]",
            format!(
                "{} differs from spec.clusterIP {}: the API server requires them equal",
                quoted(first),
                quoted(ip)
            ),
        ));
    }
    Ok(())
}

/// An EndpointSlice as the API server validates its name and namespace.
pub fn check_slice(slice: &EndpointSlice) -> Result<(), Refusal> {
    check_meta(&slice.metadata, dns1123_subdomain)
}

fn check_meta(meta: &ObjectMeta, name_rule: fn(&str) -> Result<(), String>) -> Result<(), Refusal> {
    let name = meta.name.as_deref().unwrap_or("");
    name_rule(name).map_err(|problem| refuse("metadata.name", problem))?;
    if let Some(namespace) = meta.namespace.as_deref() {
        dns1123_label(namespace).map_err(|problem| refuse("metadata.namespace", problem))?;
    }
    Ok(())
}

/// Lower-case letters, digits and '-', at most 63, starting with a letter and ending with
/// a letter or digit.
fn dns1035_label(text: &str) -> Result<(), String> {
    label(text, 63)?;
    if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{} must start with a lower-case letter",
            quoted(text)
        ));
    }
    Ok(())
}

/// Lower-case letters, digits and '-', at most 63, starting and ending with a letter or
/// digit.
fn dns1123_label(text: &str) -> Result<(), String> {
    label(text, 63)
}

/// Labels of [`dns1123_label`] joined by '.', at most 253 in all.
fn dns1123_subdomain(text: &str) -> Result<(), String> {
    if text.len() > 253 {
        return Err(format!("{} is longer than 253 characters", quoted(text)));
    }
    text.split('.').try_for_each(|part| {
        label(part, 63).map_err(|_| {
            format!(
                "{} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')",
                quoted(text)
            )
        })
    })
}

fn label(text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err("is empty".into());
    }
    if text.len() > max {
        return Err(format!("{} is longer than {max} characters", quoted(text)));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !text.chars().all(|c| alnum(c) || c == '-')
        || !text.starts_with(alnum)
        || !text.ends_with(alnum)
    {
        return Err(format!(
            "{} is not a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit)",
            quoted(text)
        ));
    }
    Ok(())
}

/// `text` with quotes, backslashes, control and bidirectional-formatting characters
/// escaped, so that no name from a file can rewrite an operator's terminal or reorder a
/// log line.
pub fn escape(text: &str) -> String {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if invisible(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// `text` escaped and in quotes, for a message.
fn quoted(text: &str) -> String {
    format!("\"{}\"", escape(text))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;

    use super::*;

    fn service(name: &str, namespace: Option<&str>, ip: &str, ips: &[&str]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: namespace.map(Into::into),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                cluster_ips: Some(ips.iter().map(|s| (*s).to_owned()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn names_the_api_server_would_refuse_are_refused_by_field() {
        for bad in [
            "",
            "None",
            "0.0.0.0",
            "web\u{202e}",
            "-web",
            "web-",
            "Web",
            "w_b",
        ] {
            let refusal =
                check_service(&service(bad, Some("demo"), "198.19.0.1", &[])).expect_err(bad);
            assert_eq!(refusal.field, "metadata.name", "{bad:?}");
        }
        let refusal =
            check_service(&service("web", Some("Demo"), "198.19.0.1", &[])).expect_err("namespace");
        assert_eq!(refusal.field, "metadata.namespace");
        assert!(check_service(&service("web", None, "198.19.0.1", &[])).is_ok());
        assert!(check_service(&service("web-2", Some("demo"), "198.19.0.1", &[])).is_ok());
        assert!(check_service(&service(&"a".repeat(64), None, "198.19.0.1", &[])).is_err());
    }

    #[test]
    fn cluster_ip_and_the_first_cluster_ips_must_agree() {
        let refusal =
            check_service(&service("web", None, "198.19.0.1", &["bogus"])).expect_err("mismatch");
        assert_eq!(refusal.field, "spec.clusterIPs[0]");
        assert_eq!(
            refusal.to_string(),
            "spec.clusterIPs[0]: \"bogus\" differs from spec.clusterIP \"198.19.0.1\": the API server requires them equal"
        );
        assert!(check_service(&service("web", None, "198.19.0.1", &["198.19.0.1"])).is_ok());
        assert!(check_service(&service("web", None, "None", &["None"])).is_ok());
        assert!(check_service(&service("web", None, "", &["198.19.0.1"])).is_ok());
    }

    #[test]
    fn slice_names_are_subdomains() {
        let slice = |name: &str| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(check_slice(&slice("web-abc12.v1")).is_ok());
        for bad in ["", "Web", "web..1", "web\u{1b}[2J"] {
            assert_eq!(
                check_slice(&slice(bad)).expect_err(bad).field,
                "metadata.name",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn escape_leaves_no_control_or_bidi_character() {
        assert_eq!(escape("web"), "web");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(escape("say \"hi\""), "say \\\"hi\\\"");
    }
}
